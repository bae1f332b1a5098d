"""A base commit checked out beside this one, for a benchmark that compares the two in one run."""
from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def worktree(rev: str, where: Path) -> Iterator[Path]:
    """A git worktree of `rev` at `where` (detached), removed afterwards whatever happens."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(where), rev], check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False)


def parse_args(doc: str, repeats: int) -> argparse.Namespace:
    """--base (the commit to compare with) and --repeats, for a script whose docstring is `doc`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (a git worktree of it)")
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser.parse_args()
