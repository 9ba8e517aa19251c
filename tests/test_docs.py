"""The documentation site: ``mkdocs build --strict`` succeeds offline, every page carries its API
(rendered from the docstrings by mkdocstrings), and the examples in ``docs/*.md`` use only public
names."""

from __future__ import annotations

import ast
import html
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGES = ("steerlens", "probes", "steer", "editing")

#: page -> (mkdocstrings anchors that must be on it, signatures that must be in its text)
PAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "index": ((), ()),
    "conventions": ((), ()),
    "core": (
        ("steerlens.load_model", "steerlens.tiny_model", "steerlens.capture", "steerlens.Activations",
         "steerlens.token_span", "steerlens.data", "steerlens.hooks", "steerlens.steps.intervene",
         "steerlens.steps.Step", "steerlens.generation", "steerlens.generation.generate_tokens",
         "steerlens.neutral.next_token_logprobs", "steerlens.neutral.perplexity", "steerlens.neutral.kl"),
        ("load_model(spec", "tiny_model(n_layers", "capture(model", "intervene(model"),
    ),
    "probes": (
        ("probes.LogisticProbe", "probes.MeanDiffProbe", "probes.LDAProbe", "probes.sweep_layers",
         "probes.LayerSweep", "probes.generalization_matrix", "probes.ProbeMonitor", "probes.metrics.auroc",
         "probes.metrics.bootstrap_ci", "probes.save_probe", "probes.load_probe"),
        ("sweep_layers(acts", "bootstrap_ci(y"),
    ),
    "steer": (
        ("steer.apply", "steer.generate", "steer.SteeringVector", "steer.compute", "steer.mean_diff", "steer.pca",
         "steer.from_probe", "steer.actadd", "steer.calibrate", "steer.sweep", "steer.fit_eraser",
         "steer.ConceptEraser", "steer.export_gguf", "steer.import_gguf", "steer.operators.add",
         "steer.operators.ablate", "steer.operators.leace"),
        ("apply(model", "generate(model", "fit_eraser(acts"),
    ),
    "serve": (
        ("steer.serve.build", "steer.serve.Server", "steer.serve.serve", "steer.serve.Engine", "steer.serve.Limits",
         "steerlens.kvcache"),
        ("build(model", "serve(model"),
    ),
    "editing": (
        ("editing.causal_trace", "editing.edit", "editing.erase", "editing.edited", "editing.EditHandle",
         "editing.RomeConfig", "editing.rome.rank_one_update", "editing.key_statistics", "editing.evaluate_edits",
         "editing.run_experiment", "editing.orthogonalize", "editing.orthogonalized", "editing.ablated",
         "editing.run_erasure", "editing.erasure.ErasureResult", "editing.write_report"),
        ("edit(model", "rank_one_update(W", "causal_trace(model"),
    ),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_is_built_with_its_api(site: Path, name: str):
    path = site / f"{name}.html"
    assert path.is_file(), f"{path.name} was not built; built: {sorted(p.name for p in site.glob('*.html'))}"
    page = path.read_text(encoding="utf-8")
    anchors, signatures = PAGES[name]
    missing = [a for a in anchors if f'id="{a}"' not in page]
    assert not missing, f"{name}.html lacks the API entries {missing}"
    text = re.sub(r"\s+", "", _text(page))
    missing = [s for s in signatures if s.replace(" ", "") not in text]
    assert not missing, f"{name}.html lacks the signatures {missing}"


def test_every_page_is_in_the_site(site: Path):
    pages = sorted(p.stem for p in DOCS.glob("*.md"))
    assert pages == sorted(PAGES)
    assert (site / "search" / "search_index.json").is_file()


def test_site_loads_nothing_from_the_network(site: Path):
    for path in site.glob("*.html"):
        page = path.read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"', page)
        assert not remote, f"{path.name} loads {remote}"


def test_conventions_list_every_hook_shorthand():
    from steerlens.hooks import SHORTHANDS

    text = (DOCS / "conventions.md").read_text(encoding="utf-8")
    for short, template in SHORTHANDS.items():
        row = f"| `{short}` | `{template.format('L')}` |"
        assert row in text, f"conventions.md has no row for the shorthand {short!r} ({template})"


# -- examples ------------------------------------------------------------------------------------
def _examples() -> list[tuple[str, int, str]]:
    """(file, line, code) of every fenced ```python block in docs/*.md."""
    out = []
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                start, body = i + 1, []
                i += 1
                while lines[i].strip() != "```":
                    body.append(lines[i])
                    i += 1
                out.append((path.name, start + 1, "\n".join(body)))
            i += 1
    return out


EXAMPLES = _examples()


def test_every_package_page_has_an_example():
    pages = {f for f, _, _ in EXAMPLES}
    assert {"core.md", "probes.md", "steer.md", "editing.md"} <= pages


def _public(module: str, name: str) -> bool:
    """``module.name`` is public: listed in the module's ``__all__`` (if it has one) or a public
    submodule, and not underscored."""
    if name.startswith("_"):
        return False
    if _is_package(module) and importlib.util.find_spec(f"{module}.{name}") is not None:
        return True
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    return name in names if names is not None else hasattr(mod, name)


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


@pytest.mark.parametrize("where,line,code", EXAMPLES, ids=[f"{f}:{n}" for f, n, _ in EXAMPLES])
def test_examples_use_only_public_names(where: str, line: int, code: str):
    tree = ast.parse(code, filename=f"{where}:{line}")
    bound: dict[str, str] = {}  # local name -> one of our modules
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(part.startswith("_") for part in alias.name.split(".")):
                    bad.append(f"import {alias.name}")
                elif _ours(alias.name):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if any(part.startswith("_") for part in module.split(".")):
                bad.append(f"from {module} import ...")
                continue
            for alias in node.names:
                if alias.name.startswith("_") or (_ours(module) and not _public(module, alias.name)):
                    bad.append(f"from {module} import {alias.name}")
                elif _ours(module) and _is_package(module) and importlib.util.find_spec(f"{module}.{alias.name}"):
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not (node.attr.startswith("__") and node.attr.endswith("__"))
            if private:
                bad.append(f"attribute .{node.attr}")
            elif isinstance(node.value, ast.Name) and node.value.id in bound:
                module = bound[node.value.id]
                if not _public(module, node.attr):
                    bad.append(f"{module}.{node.attr}")
    assert not bad, f"{where}:{line}: the example uses non-public names {bad}"


def test_every_notebook_is_executed_by_a_test():
    root = Path(__file__).parent.parent
    names = sorted(p.stem for p in (root / "notebooks").glob("*.ipynb"))
    assert names, "notebooks/ holds no notebook"
    missing = [n for n in names if not (root / "tests" / f"test_notebook_{n}.py").is_file()]
    assert not missing, f"no tests/test_notebook_<name>.py runs {missing}"
