"""A file written whole or not at all: beside its final name (or in a folder on the same
filesystem), flushed to disk, then renamed over it. A full disk or a kill never leaves an empty or
half-written file under the final name, and the temporary file never stays behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path, tmp_dir: Path | None = None) -> Iterator[Path]:
    """A temporary path to write; renamed to `path` when the block ends without an error, removed
    in every case otherwise. OSError (full disk, no permission...) goes to the caller."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """`data` as the content of `path`, atomically and fsynced (cv2.imwrite says True on a full
    disk and leaves an empty file: encode, then write the bytes here)."""
    with replacing(path, tmp_dir) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
