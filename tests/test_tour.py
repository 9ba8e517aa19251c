"""``steerlens tour`` runs every capability on one model and writes one report (tiny model: the
wiring, not the numbers; notebooks/tour.ipynb shows the numbers on the embedded Gemma)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from editing import sites
from steerlens.hooks import count_hooks
from steerlens.models import cache_dir
from steerlens.app.tour import run_tour


def test_tour_writes_one_report_and_leaves_the_model_as_it_was(tiny, tmp_path):
    weights = [sites.down_proj(tiny, L)[0].detach().clone() for L in range(tiny.cfg.n_layers)]
    hooks = count_hooks(tiny)
    path = run_tour(tiny, tmp_path / "tour", n_facts=2, n_tokens=2_000, new_tokens=6, progress=False)
    summary = json.loads((tmp_path / "tour" / "tour.json").read_text())
    assert summary["probes"]["n"] == 1744 and summary["probes"]["dataset"] == "truth" and len(summary["probes"]["test_auroc_by_layer"]) == tiny.cfg.n_layers
    assert summary["steer"]["coeff"] > 0 and len(summary["steer"]["generations"]) == 4
    assert summary["steer"]["layers"] == list(range(tiny.cfg.n_layers))  # the default recipe: every layer
    assert len(summary["editing"]["edits"]) == 2 and summary["editing"]["n_tokens"] == 2_000
    page = path.read_text()
    for section in ("Capture and probes", "Steering", "Editing", summary["steer"]["generations"][0]["prompt"]):
        assert section in page
    assert page.count("plotly.js v") == 1 and page.count('class="plotly-graph-div"') == 6  # 2 probe plots, 4 trace plots
    assert path == tmp_path / "tour" / "index.html" and "<h2>All numbers</h2>" in page
    assert all(torch.equal(sites.down_proj(tiny, L)[0], w) for L, w in enumerate(weights))  # edits reverted
    assert count_hooks(tiny) == hooks


def test_tour_cli(tiny, tmp_path, monkeypatch):
    import steerlens.app.tour as tour

    calls = {}

    def fake(model, out, **kw):  # the pipeline is tested above; here the command's wiring
        calls.update(kw, name=model.cfg.model_name)
        out.mkdir(parents=True)
        (out / "tour.json").write_text(json.dumps({
            "probes": {"method": "logistic", "best_layer": 1, "test_auroc": 0.5},
            "steer": {"coeff": 2.0, "layers": [0, 1, 2]},
            "editing": {"before": {"neighbourhood": 1.0}, "after": {"efficacy": 1.0, "neighbourhood": 0.9}}}))
        return out / "index.html"

    monkeypatch.setattr(tour, "run_tour", fake)
    from steerlens.app.cli import app

    tiny_dir = cache_dir() / "tiny" / tiny.cfg.model_name
    res = CliRunner().invoke(app, ["tour", "--model", str(tiny_dir), "--out", str(tmp_path / "t"), "--n-facts", "2",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert calls.pop("name").endswith(tiny.cfg.model_name)  # the model the command loaded
    assert calls == {"n_facts": 2, "progress": False}
    assert "test AUROC 0.500" in res.output and "neighbourhood 0.90" in res.output and "index.html" in res.output
    assert "steer: coeff 2 at layers 0–2" in res.output


def test_tour_rejects_no_facts(tiny, tmp_path):
    with pytest.raises(ValueError, match="n_facts"):
        run_tour(tiny, tmp_path, n_facts=0, progress=False)
