"""The rules of docs/architecture.md, checked on the source: what may import what, and size."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from fresh_process import run_python

ROOT = Path(__file__).resolve().parents[1]
CAMCORE = sorted((ROOT / "camcore").rglob("*.py"))
UI = sorted((ROOT / "ui").glob("*.py"))
PAGES = sorted((ROOT / "pages").glob("*.py"))
MAX_FUNCTION_LINES = 120


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _module_of(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes inside `if TYPE_CHECKING:` blocks: imports that never run."""
    return {n for block in ast.walk(tree) if isinstance(block, ast.If)
            and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
            for stmt in block.body for n in ast.walk(stmt)}


def imports(path: Path, runtime_only: bool = False, root: Path = ROOT) -> set[str]:
    """Every module a file imports, absolute dotted names; `from a import b` gives a and a.b.
    runtime_only: without those under `if TYPE_CHECKING:` (function-level imports count: they run)."""
    names: set[str] = set()
    package = _module_of(path, root) if path.name == "__init__.py" else _module_of(path, root).rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def _importers(files: list[Path], *modules: str) -> list[str]:
    return [_rel(p) for p in files
            if any(n == m or n.startswith(m + ".") for n in imports(p) for m in modules)]


def test_the_sources_are_where_the_rules_look():
    assert len(CAMCORE) > 30 and len(UI) > 10 and len(PAGES) == 7


def test_camcore_never_imports_streamlit_or_the_ui():
    assert _importers(CAMCORE, "streamlit", "ui", "pages") == []


def test_no_ui_module_or_page_imports_fiftyone():
    assert _importers([ROOT / "app.py", *UI, *PAGES], "fiftyone") == []


def test_exactly_one_ui_module_computes():
    assert _importers([ROOT / "app.py", *UI, *PAGES], "camcore.engine") == ["ui/compute.py"]


def test_pages_go_through_the_ui_for_the_store():
    assert _importers([ROOT / "app.py", *PAGES], "camcore.store") == []


def test_pages_go_through_the_ui_for_a_batch():
    """The Batch page builds its options and runs through ui/batch_runs.py."""
    assert _importers([ROOT / "app.py", *PAGES], "camcore.batch", "camcore.distributed") == []


def test_compare_renderers_read_the_store_through_ui_data():
    """Compare's studies, grid, ROAD and ranking draw; what they read from FiftyOne is a ui/data.py call."""
    compare = [p for p in UI if p.name.startswith("compare")]
    assert compare, "the Compare renderers moved: point this rule at them"
    assert _importers(compare, "camcore.store") == []


def test_what_to_look_at_is_apart_from_how_to_look():
    """ui/sidebar.py (dataset, view, sample) leaves the model, weights and input size to
    ui/sidebar_look.py: it never reads the model registries."""
    assert _importers([ROOT / "ui" / "sidebar.py"], "camcore.models", "camcore.model_spec", "camcore.model_file",
                      "camcore.weights") == []


def test_nothing_outside_a_package_reaches_into_its_private_names():
    """`store._x` or `from camcore.store.heatmaps import _x` from outside the store (same for the
    engine) is a reach-in: the owner cannot change it without breaking a stranger."""
    offenders = []
    for path in [*CAMCORE, *UI, *PAGES, ROOT / "app.py", ROOT / "plugins" / "cam-explorer" / "__init__.py"]:
        inside = _module_of(path)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in ("store", "engine") and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and not inside.startswith(f"camcore.{node.value.id}"):
                offenders.append(f"{_rel(path)}:{node.lineno} {node.value.id}.{node.attr}")
            owner = ".".join((getattr(node, "module", None) or "").split(".")[:2])
            if isinstance(node, ast.ImportFrom) and owner in ("camcore.store", "camcore.engine") \
                    and not inside.startswith(owner):
                offenders += [f"{_rel(path)}:{node.lineno} {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_")]
    assert offenders == []


@pytest.mark.parametrize("folder", ["camcore", "ui", "pages"])
def test_no_function_needs_120_lines(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= MAX_FUNCTION_LINES:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_the_heatmap_field_name_has_one_source():
    """Field names come from camcore.identity alone: no other module builds `cam_` + parts."""
    builders = [_rel(p) for p in CAMCORE + UI + PAGES
                if p.name != "identity.py" and "FIELD_PREFIX +" in p.read_text()]
    assert builders == []


def test_a_method_entry_is_keyword_fields_and_a_typed_kind():
    """Adding a method is one MethodSpec entry: named fields (no bare positional booleans), a Kind
    (mypy checks it; so does the entry), and the math its kind needs, checked when it is built."""
    from camcore.methods import METHODS, Kind, MethodSpec

    assert all(f.kw_only for f in dataclasses.fields(MethodSpec))
    with pytest.raises(TypeError):
        MethodSpec("x", "X", "GradCAM", Kind.ACTIVATION, True, library_image=True)  # type: ignore[misc]
    with pytest.raises(TypeError, match="kind must be a Kind"):
        MethodSpec(key="x", label="X", library_class="GradCAM", kind="activation", library_image=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_weights"):
        MethodSpec(key="x", label="X", library_class="ScoreCAM", kind=Kind.PERTURBATION)
    assert {type(spec.kind) for spec in METHODS.values()} == {Kind}


def test_every_kind_has_its_strategy():
    from camcore.engine import kinds
    from camcore.methods import METHODS, Kind

    strategies = {kind: type(kinds.strategy_for(next(s for s in METHODS.values() if s.kind is kind)))
                  for kind in Kind}
    assert strategies == {Kind.GRADIENT: kinds.FromPass, Kind.ACTIVATION: kinds.FromPass,
                          Kind.PERTURBATION: kinds.Perturbation, Kind.OWN_PASS: kinds.OwnPass}


def test_the_slow_method_label_has_one_source():
    """The label "Score-CAM  (slow)" is built by methods.method_label alone, wherever a method is offered."""
    plugin = sorted((ROOT / "plugins").rglob("*.py"))
    builders = [_rel(p) for p in CAMCORE + UI + PAGES + plugin + [ROOT / "app.py"]
                if p.name != "methods.py" and re.search(r"\(slow\)[\"']\s*if", p.read_text())]
    assert builders == []


def _import_cycles(files: list[Path], root: Path = ROOT) -> list[list[str]]:
    """The groups of modules that import each other at run time, directly or around a loop (lazy,
    function-level imports included: they run too; `if TYPE_CHECKING:` imports do not)."""
    modules = {_module_of(p, root): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for target in imports(path, runtime_only=True, root=root):
            while target and target not in modules:  # camcore.models.load_model -> camcore.models
                target = target.rpartition(".")[0]
            # a module importing its own package (`from camcore.store import schema`) is no loop
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    reach = {name: _reachable(graph, name) for name in graph}
    groups = {frozenset(m for m in reach[name] if name in reach[m]) | {name} for name in graph}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, ())
    return seen


def test_no_camcore_modules_import_each_other_around_a_loop():
    assert _import_cycles(CAMCORE) == []


def test_the_loop_check_sees_lazy_imports(tmp_path):
    """Control: a loop closed by a function-level import is found; one closed under TYPE_CHECKING is not."""
    pkg = tmp_path / "camcore"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from camcore import b\n")
    (pkg / "b.py").write_text("from camcore.a import f\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from camcore import d\n")
    (pkg / "d.py").write_text("from camcore import c\n")
    files = sorted(pkg.glob("*.py"))
    assert _import_cycles(files, root=tmp_path) == [["camcore.a", "camcore.b"]]


FIFTYONE = ("fiftyone", "bson", "pymongo", "motor")
PLUGIN = ROOT / "plugins" / "cam-explorer" / "__init__.py"
OUTSIDE_THE_STORE = [p for p in CAMCORE if "store" not in p.relative_to(ROOT / "camcore").parts
                     and p.name != "demo_data.py"]  # the demo dataset's builder may stay where it is


def test_only_the_store_calls_fiftyone():
    """A FiftyOne upgrade touches camcore/store only: no other camcore module imports FiftyOne or
    MongoDB at run time (type hints under TYPE_CHECKING are fine), and the plugin imports only the
    operator API it is written against."""
    runtime = [p for p in OUTSIDE_THE_STORE
               if any(n == m or n.startswith(m + ".") for n in imports(p, runtime_only=True) for m in FIFTYONE)]
    assert [_rel(p) for p in runtime] == []
    plugin = {n for n in imports(PLUGIN, runtime_only=True) if n.split(".")[0] in FIFTYONE}
    assert {n for n in plugin if not n.startswith("fiftyone.operators")} <= {"fiftyone"}  # fo.config only


def _private_names_we_define() -> set[str]:
    names = set()
    for path in [*CAMCORE, PLUGIN]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_")}


def test_nothing_outside_the_store_reads_a_librarys_private_names():
    """`view._root_dataset`, `dataset._sample_collection`, `DatasetView._build`: FiftyOne's private
    names change without notice; outside the store a private attribute must be one of our own."""
    ours = _private_names_we_define()
    offenders = []
    for path in [*OUTSIDE_THE_STORE, PLUGIN]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and node.attr not in ours:
                offenders.append(f"{_rel(path)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == []


def test_the_map_names_the_ui_modules_that_reach_the_store():
    """docs/architecture.md lists the ui modules importing camcore.store; the list is the truth."""
    doc = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    listed = doc.split("The ui modules that import `camcore.store` are exactly:", 1)[1].split("(", 1)[0]
    named = {f"ui/{name}" for name in re.findall(r"`([a-z_]+\.py)`", listed)}
    assert named == set(_importers(UI, "camcore.store"))


# The explorer's pages that read what is stored, and the Batch page's form: no torch until a heatmap
# is computed (a stored link to one of them opened a fresh explorer after ~3 s of imports and ~800
# MiB more memory). A page's own module-level imports and app.py's, in a fresh process.
READING_PAGES = ("audit", "findings", "runs", "batch", "review")


def _module_level_imports(path: Path) -> set[str]:
    """The camcore and ui modules a file imports at its top level (those run when it loads)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {n for n in names if n.split(".")[0] in ("camcore", "ui")
            and (ROOT.joinpath(*n.split(".")).with_suffix(".py").is_file()
                 or ROOT.joinpath(*n.split("."), "__init__.py").is_file())}


def test_the_pages_that_read_what_is_stored_load_no_torch():
    files = [ROOT / "app.py", *(ROOT / "pages" / f"{name}.py" for name in READING_PAGES)]
    modules = sorted(set().union(*map(_module_level_imports, files)))
    assert "ui.batch_runs" in modules and "ui.review" in modules  # the rule sees the pages' parts
    script = ("import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
              "print(' '.join(x for x in ('torch', 'torchvision', 'pytorch_grad_cam') if x in sys.modules) or 'none')")
    loaded = run_python(script, *modules)
    assert loaded.split()[-1:] == ["none"], f"loaded: {loaded.strip()}"
