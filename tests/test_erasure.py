"""Concept-erasure experiments (``editing.erasure``) on the tiny model: the runner's numbers, the
offline shortcut equal to a capture under the eraser, sequential scrubbing, the random control,
the report, and bad input (each error naming its field)."""

import json

import numpy as np
import pytest
import torch

import steer
import steerlens
from editing import erasure as E
from steerlens.hooks import count_hooks

BODIES = ["the cat sat on the mat", "we walk to the shop", "a red ball rolls", "rain falls on the roof",
          "my friend reads books", "the sun is bright today", "birds sing in trees", "he plays the drum"]
FAMILIES = {"alpha": "first", "beta": "second", "gamma": "third"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A concept the tiny model reads at its last token ('!' vs '?' endings, three families, a pair
    per group) and an unrelated control concept ('.' vs ',' endings)."""
    d = tmp_path_factory.mktemp("erasure")
    concept, control = [], []
    for fam, word in FAMILIES.items():
        for i, body in enumerate(BODIES):
            for k in range(2):
                text = f"{word} {body} {'again' if k else 'now'}"
                g = f"{fam}-{i}-{k}"
                concept += [{"prompt": text + " !", "label": 1, "family": fam, "group": g},
                            {"prompt": text + " ?", "label": 0, "family": fam, "group": g}]
                control += [{"prompt": text + " .", "label": 1, "group": g}, {"prompt": text + " ,", "label": 0, "group": g}]
    return _write(d / "concept.jsonl", concept), _write(d / "control.jsonl", control)


def spec(datasets, **kw):
    base = {"dataset": datasets[0], "control": datasets[1], "layer": 1, "C": 0.1, "max_new_tokens": 3,
            "prompts": ["the cat"]}
    return {**base, **kw}


@pytest.fixture(scope="module")
def result(tiny, datasets):
    return E.run_erasure(tiny, spec(datasets, methods=["leace", "leace_family", "iterated", "ablation", "scrub"],
                                    probe_layers=[0, 1, 2], rounds=2), progress=False)


def test_leace_erases_the_concept_and_keeps_the_control(result):
    b, m = result.before, result.methods["leace"]
    assert b["concept"][1] > 0.9  # readable before
    assert m["concept"][1] <= 0.6  # re-trained on the eraser's erased rows, scored on held-out groups
    assert set(m["concept_unseen"]) == {0, 1, 2} and b["concept_unseen"][1] > 0.9
    assert m["control"][1] >= b["control"][1] - 0.05 and b["control"][1] > 0.9
    assert m["rank"] == 1 and m["layers"] == [1]
    assert m["kl"] >= 0 and np.isfinite(m["perplexity"]) and len(m["generations"]) == 1
    assert m["random"]["rank"] == 1 and m["random"]["concept"][1] > 0.8  # a random direction erases nothing
    assert set(m["concept"]) == {0, 1, 2} and m["concept"][0] == b["concept"][0]  # below the eraser: untouched


def test_family_conditioned_eraser_has_higher_rank(result):
    assert result.methods["leace_family"]["rank"] == 2 * len(FAMILIES) - 1
    oof = result.methods["leace_family"]["out_of_family"]
    assert set(oof["by_family"]) == set(FAMILIES) and oof["max"] >= oof["mean"]
    rounds = result.methods["iterated"]["rounds"]
    assert 1 <= len(rounds) <= 2 and rounds[0]["rank"] == 1


def test_scrubbing_erases_every_scrubbed_layer(result):
    m = result.methods["scrub"]
    assert m["layers"] == [0, 1]
    assert all(m["concept"][layer] <= 0.6 for layer in (0, 1)), m["concept"]
    assert set(m["out_of_family"]["by_family"]) == set(FAMILIES) and m["notes"]


def test_scrub_of_one_layer_is_leace_out_of_family_too(tiny, datasets):
    """Scrubbing only the erased layer fits the same eraser as LEACE, so its out-of-family figures
    (re-fitted without each family, with the held-out family's rows captured) are LEACE's."""
    r = E.run_erasure(tiny, spec(datasets, methods=["leace", "scrub"], scrub_layers=[1], control=None), progress=False)
    a, b = (r.methods[m]["out_of_family"]["by_family"] for m in ("leace", "scrub"))
    assert set(a) == set(b) == set(FAMILIES)
    for f in a:
        assert a[f]["after"] == pytest.approx(b[f]["after"], abs=1e-6), f


def test_summary_figures_and_json(result):
    rows = result.summary()
    assert [r["method"] for r in rows] == ["leace", "leace_family", "iterated", "ablation", "scrub"]
    assert all(r["kl"] is not None and r["random_kl"] is not None for r in rows)
    assert len(result.figures()) == 4
    back = json.loads(json.dumps(result.to_dict()))
    assert back["methods"]["leace"]["concept"]["1"] == result.methods["leace"]["concept"][1]


def test_offline_erasure_equals_a_capture_under_the_eraser(tiny, datasets):
    rows = steerlens.data.prompt_rows(datasets[0])[:24]
    prompts = [r["prompt"] for r in rows]
    acts = steerlens.capture(tiny, prompts, "resid_post", layers=[1], labels=[r["label"] for r in rows], progress=False)
    eraser = steer.fit_eraser(acts, layers=[1])
    hooks = count_hooks(tiny)
    under = E._capture(tiny, prompts, [1], 8, E._context(tiny, eraser))[1]
    torch.testing.assert_close(torch.as_tensor(under), eraser(acts.at(1), 1), atol=1e-5, rtol=1e-5)
    assert count_hooks(tiny) == hooks


def test_write_report(tmp_path, result):
    from editing.erasure_report import write_erasure_report

    path = write_erasure_report(result, tmp_path / "rep")
    assert path.name == "report.html" and "leace_family" in path.read_text()
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["summary"][0]["method"] == "leace"


# -- bad input: each error names its field ------------------------------------------------------------
def test_spec_errors(tiny, datasets, tmp_path):
    with pytest.raises(ValueError, match=r"unknown erasure spec keys \['layerz'\]"):
        E.ErasureSpec.from_dict({"layerz": 3})
    with pytest.raises(ValueError, match=r"methods\[1\] = 'lace'"):
        E.ErasureSpec(methods=["leace", "lace"])
    with pytest.raises(ValueError, match="layer = -1"):
        E.ErasureSpec(layer=-1)
    with pytest.raises(ValueError, match=r"layer = 7 is out of range for a model with 3 layers"):
        E.run_erasure(tiny, spec(datasets, layer=7), progress=False)
    with pytest.raises(ValueError, match=r"probe_layers\[0\] = 5 is out of range"):
        E.run_erasure(tiny, spec(datasets, probe_layers=[5]), progress=False)
    one = _write(tmp_path / "one.jsonl", [{"prompt": f"x {i}", "label": 1, "group": str(i)} for i in range(20)])
    with pytest.raises(ValueError, match=r"concept 'label' of .* has 1 class"):
        E.run_erasure(tiny, spec(datasets, dataset=one), progress=False)
    with pytest.raises(ValueError, match="concept = 'colour' is not a field"):
        E.run_erasure(tiny, spec(datasets, concept="colour"), progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "truthfulness", "method": "leace"}))
    with pytest.raises(ValueError, match=r"bad.json: unknown erasure spec keys \['method'\]"):
        E.load_erasure_spec(bad)


def test_mismatched_widths(tiny, datasets):
    rows = steerlens.data.prompt_rows(datasets[0])
    wrong = steerlens.Activations({f"blocks.{layer}.hook_resid_post": torch.zeros(len(rows), 32) for layer in range(3)}, rows,
                                  lengths=[1] * len(rows), pool="last")
    with pytest.raises(ValueError, match=r"acts\[.*concept.jsonl'\] at layer 1 is \(\d+, 32\) wide; the model's d_model is 64"):
        E.run_erasure(tiny, spec(datasets), acts={datasets[0]: wrong}, progress=False)
    with pytest.raises(ValueError, match="the eraser has width 32"):
        from steer.operators import EraserTensors

        steer.apply(tiny, steer.ConceptEraser({1: EraserTensors(torch.zeros(32, 1), torch.zeros(1, 32), torch.zeros(32))}),
                    op="leace")
