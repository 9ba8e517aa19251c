"""sweep, calibrate, costs and reports on the tiny model."""

import json
import math

import numpy as np
import pytest
import torch

import steer
import steerlens
from steer.evaluate import LogitDiff, ProbeScore, logit_diff, steering_cost
from steer.vector import SteeringVector

TEXTS = ["the cat sat on the mat.", "a b c d e f g", "hello world, this is a test"]
PROMPTS = ["once upon", "the dog", "hi"]


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(64, generator=g)
    return SteeringVector({1: v / v.norm()}, method="test")


def test_cost_grows_with_the_coefficient(tiny, vec):
    zero = steering_cost(tiny, vec, 0.0, texts=TEXTS)
    assert zero.kl == pytest.approx(0.0, abs=1e-6) and zero.ppl_ratio == pytest.approx(1.0, abs=1e-6)
    kls = [steering_cost(tiny, vec, c, texts=TEXTS).kl for c in (0.5, 2.0, 8.0)]
    assert 0 < kls[0] < kls[1] < kls[2]


def test_sweep_with_a_function_and_a_control(tiny, vec):
    calls = []

    def count_a(texts):
        calls.append(list(texts))
        return [t.count("a") / max(len(t), 1) for t in texts]

    res = steer.sweep(tiny, vec, [0.0, 1.0, 4.0], PROMPTS, behaviour=count_a, neutral=TEXTS,
                      max_new_tokens=5, progress=False)
    assert [p.coeff for p in res.points] == [0.0, 1.0, 4.0]
    assert len(res.control) == 3 and res.behaviour == "count_a"
    assert res.points[0].kl == 0 and res.points[0].ppl_ratio == 1
    assert res.points[2].kl > res.points[1].kl > 0
    for p in res.points + res.control:
        assert len(p.samples) == len(PROMPTS) and len(p.scores) == len(PROMPTS)
        assert p.behaviour == pytest.approx(sum(p.scores) / len(p.scores))
    assert len(calls) == 6
    assert res.meta["control"] == "isotropic"
    # a control shaped like activations (vector.random_like(seed, acts=...)); anything else is refused
    acts = steerlens.capture(tiny, TEXTS, "resid_post", layers=[1], pool="mean", progress=False)
    shaped = steer.sweep(tiny, vec, [1.0], PROMPTS, behaviour=count_a, neutral=TEXTS, max_new_tokens=5,
                         control=acts, progress=False)
    assert shaped.meta["control"] == "activation-shaped" and len(shaped.control) == 1
    assert shaped.control[0].kl == pytest.approx(
        steering_cost(tiny, vec.random_like(0, acts=acts), 1.0, texts=TEXTS).kl, rel=1e-5)
    assert shaped.control[0].kl != pytest.approx(res.control[1].kl, rel=1e-3)  # not the isotropic direction
    with pytest.raises(TypeError, match="control must be"):
        steer.sweep(tiny, vec, [1.0], PROMPTS, neutral=TEXTS, control="yes", progress=False)
    # the unsteered point equals plain generation
    assert list(res.points[0].samples) == steer.generate(tiny, PROMPTS, None, max_new_tokens=5)
    d = res.to_dict()
    assert json.loads(json.dumps(d))["points"][1]["coeff"] == 1.0


def test_logit_diff_behaviour(tiny, vec):
    target = LogitDiff(positive=["a"], negative=["b"])
    base = logit_diff(tiny, PROMPTS, target)
    a_id = tiny.tokenizer("a", add_special_tokens=False)["input_ids"][0]
    b_id = tiny.tokenizer("b", add_special_tokens=False)["input_ids"][0]
    logits = tiny(PROMPTS[0], return_type="logits")[0, -1]
    assert base[0] == pytest.approx(float(logits[a_id] - logits[b_id]), abs=1e-4)
    res = steer.sweep(tiny, vec, [0.0, 3.0], PROMPTS, behaviour=target, neutral=TEXTS, max_new_tokens=3,
                      control=False, progress=False)
    assert res.points[0].behaviour == pytest.approx(sum(base) / 3, abs=1e-4)
    assert res.points[1].behaviour != pytest.approx(res.points[0].behaviour, abs=1e-4)
    assert res.control == ()
    with pytest.raises(ValueError, match="single tokens"):
        logit_diff(tiny, PROMPTS, LogitDiff(positive=["ab"], negative=["b"]))


def test_calibrate_finds_the_largest_coefficient_within_budget(tiny, vec):
    budget = 0.01  # the random tiny model saturates near KL 0.029
    cal = steer.calibrate(tiny, vec, kl_budget=budget, texts=TEXTS, steps=5)
    c = cal.coeff
    assert c is not None and c > 0
    info = cal.info["calibration"]
    assert info["kl"] <= budget and info["kl_budget"] == budget
    assert steering_cost(tiny, vec, c, texts=TEXTS).kl == pytest.approx(info["kl"], rel=1e-4)
    # the next coefficient tried above it was over budget, and not far above it
    above = [t for t in info["tried"] if t["coeff"] > c]
    assert above and all(not t["ok"] for t in above)
    assert min(t["coeff"] for t in above) / c < 1.1
    assert vec.coeff is None  # the input vector is unchanged
    # a perplexity budget
    cal2 = steer.calibrate(tiny, vec, kl_budget=None, ppl_budget=1.05, texts=TEXTS, steps=3)
    assert cal2.info["calibration"]["ppl_ratio"] <= 1.05


def test_calibrate_errors(tiny, vec):
    with pytest.raises(ValueError, match="kl_budget and/or ppl_budget"):
        steer.calibrate(tiny, vec, kl_budget=None)
    with pytest.raises(ValueError, match="kl_budget"):
        steer.calibrate(tiny, vec, kl_budget=float("nan"))
    with pytest.raises(ValueError, match="ppl_budget"):
        steer.calibrate(tiny, vec, ppl_budget=0.9)
    with pytest.raises(ValueError, match="add"):
        steer.calibrate(tiny, vec, op="ablate")
    with pytest.raises(ValueError, match="finite"):
        steer.sweep(tiny, vec, [1.0, math.nan], PROMPTS)
    with pytest.raises(ValueError, match="d_model"):
        steer.sweep(tiny, SteeringVector({1: torch.ones(8)}), [1.0], PROMPTS)


def test_report_is_self_contained(tiny, vec, tmp_path):
    res = steer.sweep(tiny, vec, [0.0, 2.0], PROMPTS, behaviour=lambda ts: [len(t) for t in ts],
                      neutral=TEXTS, max_new_tokens=3, progress=False)
    path = steer.write_report(res, tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.html"
    html = path.read_text()
    assert html.count("plotly.js v") == 1 and "Plotly" in html and 'src="http' not in html
    assert "random control" in html
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [p["coeff"] for p in data["points"]] == [0.0, 2.0] and len(data["control"]) == 2
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]  # no temp files left


class _FirstFeature:
    """A probe stand-in: P(positive) = sigmoid(x[0]); ``meta_`` as sweep_layers/load_probe set it."""

    def __init__(self, pool=None):
        if pool is not None:
            self.meta_ = {"pool": pool}

    def predict_proba(self, X):
        import numpy as np

        p = 1 / (1 + np.exp(-np.asarray(X, dtype=np.float64)[:, 0]))
        return np.stack([1 - p, p], 1)


def _scores_with(tiny, texts, pool):
    acts = steerlens.capture(tiny, texts, "resid_post", layers=[2], pool=pool, progress=False)
    return _FirstFeature().predict_proba(acts.at(2))[:, 1]


def test_probe_score_pools_as_the_probe_was_fitted(tiny, vec):
    """A last-pooled probe is read with last pooling unless told otherwise (and a mean-pooled one
    with mean pooling), whatever the default of steer.compute or capture."""
    kw = dict(neutral=TEXTS, max_new_tokens=3, control=False, progress=False)
    texts = steer.generate(tiny, PROMPTS, None, max_new_tokens=3)
    scored = [t if t.strip() else p + t for p, t in zip(PROMPTS, texts)]
    last, mean = _scores_with(tiny, scored, "last"), _scores_with(tiny, scored, "mean")
    assert not np.allclose(last, mean)  # the test can tell the two apart
    for pool, want in (("last", last), ("mean", mean)):
        res = steer.sweep(tiny, vec, [0.0], PROMPTS, behaviour=ProbeScore(_FirstFeature(pool), layer=2), **kw)
        np.testing.assert_allclose(res.points[0].scores, want, rtol=1e-5)
        assert res.meta["probe"] == {"layer": 2, "pool": pool}
    # an explicit pool wins over the probe's
    res = steer.sweep(tiny, vec, [0.0], PROMPTS, behaviour=ProbeScore(_FirstFeature("last"), 2, pool="mean"), **kw)
    np.testing.assert_allclose(res.points[0].scores, mean, rtol=1e-5)
    # no pooling on the probe: the vector's, else "mean" with a warning
    assert ProbeScore(_FirstFeature(), 2).resolve_pool(vec.replace(info={"pool": "last"})) == "last"
    with pytest.warns(UserWarning, match="records no pooling"):
        res = steer.sweep(tiny, vec, [0.0], PROMPTS, behaviour=ProbeScore(_FirstFeature(), layer=2), **kw)
    np.testing.assert_allclose(res.points[0].scores, mean, rtol=1e-5)
    with pytest.raises(ValueError, match="'all'"):
        ProbeScore(_FirstFeature("all"), 2).resolve_pool()
    with pytest.raises(ValueError, match="pool must be"):
        ProbeScore(_FirstFeature(), 2, pool="max")


def test_probe_score_default_follows_the_probes_own_record(tiny):
    """sweep_layers records the pooling in the probe, so a swept probe scores as it was fitted."""
    import probes

    rows = [{"prompt": p, "label": i % 2} for i, p in enumerate(TEXTS * 4)]
    for pool in ("last", "mean"):
        acts = steerlens.capture(tiny, [r["prompt"] for r in rows], "resid_post", layers=[2], pool=pool, rows=rows,
                                 progress=False)
        probe = probes.sweep_layers(acts, methods=["mean_diff"], controls=False, n_boot=0).probe
        assert ProbeScore(probe, 2).resolve_pool() == pool


# -- judges in sweep and calibration ------------------------------------------------------------
@pytest.fixture(scope="module")
def a_vector(tiny):
    """The unembedding row of byte "a" at the last block: a large coefficient makes the tiny model write "a"s."""
    aid = tiny.tokenizer("a", add_special_tokens=False)["input_ids"][0]
    w = tiny.original_model.get_output_embeddings().weight.detach()[aid]
    return SteeringVector({2: w / w.norm()}, method="test")


class _AShare:
    """A user's own judge: the fraction of "a" characters; 'positive' when at least half."""

    threshold = 0.5
    name = "a-share"

    def __call__(self, texts):
        return [t.count("a") / max(len(t), 1) for t in texts]


def test_sweep_reports_judge_shares_and_degenerate_rate(tiny, a_vector):
    res = steer.sweep(tiny, a_vector, [0.0, 4.0], PROMPTS, behaviour=_AShare(), neutral=TEXTS, max_new_tokens=6,
                      control=False, progress=False)
    plain, steered = res.points
    assert res.behaviour == "a-share"
    assert plain.positive_share == sum(s >= 0.5 for s in plain.scores) / 3 < steered.positive_share == 1.0
    assert plain.degenerate == steered.degenerate == 0.0  # one word each: short, not repeated
    no_threshold = steer.sweep(tiny, a_vector, [0.0], PROMPTS, behaviour=lambda ts: [0.0] * len(ts), neutral=TEXTS,
                               max_new_tokens=2, control=False, progress=False).points[0]
    assert no_threshold.positive_share is None and no_threshold.degenerate is not None


def test_calibrate_to_a_behaviour_shift_finds_the_smallest_coefficient(tiny, a_vector, tmp_path):
    cal = steer.calibrate(tiny, a_vector, target_shift=0.6, judge=_AShare(), prompts=PROMPTS, texts=TEXTS,
                          max_new_tokens=6, start=0.01, steps=4)
    info = cal.info["calibration"]
    assert info["mode"] == "behaviour" and info["reached"] and info["judge"] == "a-share"
    assert info["shift"] >= 0.6 and cal.coeff == info["coeff"]
    # the chosen coefficient is the smallest tried that reached the target, and bisection closed in on it
    below = [t for t in info["tried"] if t["coeff"] < cal.coeff]
    assert below and not any(t["ok"] for t in below)
    assert cal.coeff / max(t["coeff"] for t in below) < 1.2
    chosen = next(t for t in info["tried"] if t["coeff"] == cal.coeff)
    assert chosen["kl"] == pytest.approx(steering_cost(tiny, a_vector, cal.coeff, texts=TEXTS).kl, rel=1e-4)
    assert info["baseline"]["coeff"] == 0.0 and info["baseline"]["kl"] == 0.0
    # the effect-cost curve: figure (chosen point marked) and a report
    from steer.plots import calibration_figure

    fig = calibration_figure(cal)
    stars = [t for t in fig.data if t.name == "chosen"]
    assert len(stars) == 2 and stars[0].x[0] == cal.coeff
    path = steer.write_report(cal, tmp_path / "cal")
    data = json.loads((tmp_path / "cal" / "report.json").read_text())
    assert data["calibration"]["coeff"] == cal.coeff and "chosen" in path.read_text()


def test_calibrate_to_a_shift_it_cannot_reach_warns(tiny, a_vector):
    with pytest.warns(UserWarning, match="reached"):
        cal = steer.calibrate(tiny, a_vector, target_shift=0.6, judge=_AShare(), prompts=PROMPTS, texts=TEXTS,
                              max_new_tokens=4, start=0.01, max_coeff=0.04, steps=1)
    assert not cal.info["calibration"]["reached"] and cal.coeff <= 0.04
    # a perplexity cap: text without an "a" gets less likely as the model is pushed to write "a"s
    no_a = ["the dog is here.", "this is the end of it", "hello world, this is my test"]
    saturated = steering_cost(tiny, a_vector, 256.0, texts=no_a).ppl_ratio  # LayerNorm bounds the tiny model's cost
    assert saturated > 1.001
    budget = 1 + (saturated - 1) / 2
    with pytest.warns(UserWarning, match="caps"):  # a shift of 1.01 in a share is out of reach
        cal = steer.calibrate(tiny, a_vector, target_shift=1.01, judge=_AShare(), prompts=PROMPTS, texts=no_a,
                              max_new_tokens=4, start=0.01, ppl_budget=budget, steps=3)
    info = cal.info["calibration"]
    over = [t for t in info["tried"] if t["ppl_ratio"] > budget]
    # the doubling stopped at the first coefficient over the cap; bisection stayed below it
    assert over and max(t["coeff"] for t in info["tried"]) == max(t["coeff"] for t in over) < 256
    assert info["ppl_ratio"] <= budget and not info["reached"]
    within = [t for t in info["tried"] if t["within_caps"]]
    top = max(t["shift"] for t in within)  # the best shift within the caps, at its largest coefficient
    assert cal.coeff == max(t["coeff"] for t in within if t["shift"] == top)
    assert len(info["tried"]) == len({t["coeff"] for t in info["tried"]})
    # a start already over the cap halves into it (a multi-layer vector's coefficient is small)
    with pytest.warns(UserWarning, match="caps"):
        cal = steer.calibrate(tiny, a_vector, target_shift=1.01, judge=_AShare(), prompts=PROMPTS, texts=no_a,
                              max_new_tokens=4, start=256.0, ppl_budget=budget, steps=2)
    info = cal.info["calibration"]
    assert info["tried"][0]["coeff"] < 256 and info["ppl_ratio"] <= budget and cal.coeff < 256  # sorted by coeff


def test_calibrate_behaviour_errors(tiny, a_vector):
    kw = dict(prompts=PROMPTS, texts=TEXTS, max_new_tokens=2)
    with pytest.raises(ValueError, match="target_shift"):
        steer.calibrate(tiny, a_vector, target_shift=0.0, judge=_AShare(), **kw)
    with pytest.raises(ValueError, match="metric"):
        steer.calibrate(tiny, a_vector, target_shift=0.3, judge=_AShare(), metric="median", **kw)
    with pytest.raises(ValueError, match="threshold"):
        steer.calibrate(tiny, a_vector, target_shift=0.3, judge=lambda ts: [0.0] * len(ts), **kw)
    with pytest.raises(TypeError, match="needs a judge"):
        steer.calibrate(tiny, a_vector, target_shift=0.3, judge=LogitDiff(["a"], ["b"]), **kw)
    with pytest.raises(ValueError, match="max_degenerate"):
        steer.calibrate(tiny, a_vector, target_shift=0.3, judge=_AShare(), max_degenerate=2, **kw)
