"""The rules of docs/architecture.md, checked on the source: what may import what, and size."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CAMCORE = sorted((ROOT / "camcore").rglob("*.py"))
UI = sorted((ROOT / "ui").glob("*.py"))
PAGES = sorted((ROOT / "pages").glob("*.py"))
MAX_FUNCTION_LINES = 120


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, absolute dotted names; `from a import b` gives a and a.b."""
    names: set[str] = set()
    package = _module_of(path) if path.name == "__init__.py" else _module_of(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
        MethodSpec("x", "X", object, Kind.ACTIVATION, True, library_image=True)  # type: ignore[misc]
    with pytest.raises(TypeError, match="kind must be a Kind"):
        MethodSpec(key="x", label="X", cls=object, kind="activation", library_image=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="channel_weights"):
        MethodSpec(key="x", label="X", cls=object, kind=Kind.PERTURBATION)
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
