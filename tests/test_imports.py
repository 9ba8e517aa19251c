"""The import graph flows one way: core ← probes ← steer ← editing ← app (DESIGN.md). Read from
the source, so a lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: package -> the first-party packages it may import
ALLOWED = {
    "steerlens": {"steerlens"},
    "probes": {"steerlens", "probes"},
    "steer": {"steerlens", "probes", "steer"},
    "editing": {"steerlens", "probes", "steer", "editing"},
}
OURS = set(ALLOWED)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value.split(".")[0])
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.add(str(arg.values[0].value).split(".")[0])
    return found & OURS


def _modules():
    for pkg in ALLOWED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if pkg == "steerlens" and "app" in path.relative_to(ROOT / pkg).parts:
                continue  # the app layer sits above everything
            yield pkg, path


@pytest.mark.parametrize("pkg,path", list(_modules()), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_no_module_imports_a_higher_package(pkg, path):
    bad = _imports(path) - ALLOWED[pkg]
    assert not bad, f"{path.relative_to(ROOT)} ({pkg}) imports {sorted(bad)}"


def test_the_check_would_catch_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from steer.steering import apply\n    import editing\n")
    assert _imports(f) == {"steer", "editing"}
