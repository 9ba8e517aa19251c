"""Acceptance on the embedded Gemma 3 270M (issue 16): the default sentiment recipe, calibrated to a
behaviour shift on ``steer.evaluate.NEUTRAL_OPENINGS``, moves an external judge (VADER, which
never sees an activation) on held-out openings (``steer.judges.HELD_OUT_OPENINGS``, used neither to
build nor to calibrate the vector) within the cost limits, and a random same-norm direction at the
same coefficient does not make text positive; the probe judge (it reads the injected direction) is
an extra check. Two acceptance figures are not met on this model and are strict xfails with the
measured numbers: a +0.30 shift of the positive share, and a random direction moving it by <= 0.05.
Also: cached generation equals full recompute; per-row batches equal solo runs.

Everything expensive is computed once in module fixtures (the capture of the 300 sentiment
sentences, the calibration generations, three batched generations of the held-out openings).
"""

import numpy as np
import pytest

import steer
import steerlens
from steer.evaluate import NEUTRAL_OPENINGS, steering_cost
from steer.judges import HELD_OUT_OPENINGS, VaderJudge, degenerate_rate, judge_texts

pytestmark = pytest.mark.gemma

STEER_LAYER = 6  # of 18: the default recipe (benchmarks/README.md, steering recipe table)
PROBE_LAYER = 10
NEW_TOKENS = 16
TARGET = 0.30  # issue 16: positive share up by >= 0.30 over unsteered
PPL_LIMIT, DEGENERATE_LIMIT, CONTROL_LIMIT = 1.30, 0.05, 0.05


@pytest.fixture(scope="module")
def sentiment(gemma):
    """Mean-pooled resid_post of the 150 shipped sentiment pairs at the steering and probe layers."""
    pairs = steerlens.data.load("sentiment")
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    labels = [1] * len(pairs) + [0] * len(pairs)
    return steerlens.capture(gemma, texts, "resid_post", layers=[STEER_LAYER, PROBE_LAYER], pool="mean",
                             labels=labels, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def probe(sentiment):
    from probes import LogisticProbe

    return LogisticProbe().fit(sentiment.at(PROBE_LAYER), sentiment.labels)


@pytest.fixture(scope="module")
def vector(gemma, sentiment):
    """The default recipe: steer.compute's mean_diff of mean-pooled pairs at layer 6, calibrated to
    the target shift of VADER's positive share on the calibration openings, within the limits."""
    v = steer.mean_diff(sentiment, layers=[STEER_LAYER])
    return steer.calibrate(gemma, v, target_shift=TARGET, judge=VaderJudge(), prompts=NEUTRAL_OPENINGS,
                           max_new_tokens=NEW_TOKENS, ppl_budget=PPL_LIMIT, max_degenerate=DEGENERATE_LIMIT,
                           start=2.0, steps=2)


def _probe_p(gemma, probe, prompts, texts):
    scored = [t if t.strip() else p + t for p, t in zip(prompts, texts)]
    acts = steerlens.capture(gemma, scored, "resid_post", layers=[PROBE_LAYER], pool="mean", progress=False)
    return probe.predict_proba(acts.at(PROBE_LAYER))[:, 1]


@pytest.fixture(scope="module")
def runs(gemma, probe, vector):
    """Held-out openings, unsteered / steered / random same-norm direction, in one batch."""
    prompts, k = list(HELD_OUT_OPENINGS), len(HELD_OUT_OPENINGS)
    control = vector.random_like(seed=0)
    texts = steer.generate(gemma, prompts * 3, [None] * k + [vector] * k + [control] * k,
                           coeff=[0.0] * k + [vector.coeff] * 2 * k, max_new_tokens=NEW_TOKENS)
    out = {}
    for i, name in enumerate(("baseline", "steered", "control")):
        t = texts[i * k:(i + 1) * k]
        out[name] = {"texts": t, "judge": judge_texts(VaderJudge(), [x if x.strip() else p + x for p, x in zip(prompts, t)]),
                     "degenerate": degenerate_rate(t), "p": _probe_p(gemma, probe, prompts, t)}
    out["cost"] = steering_cost(gemma, vector, vector.coeff)
    return out


def _summary(vector, runs) -> str:
    cal = vector.info["calibration"]
    lines = [f"coeff={vector.coeff:.3f} (calibration: reached={cal['reached']} shift={cal['shift']:.3f} on "
             f"{len(cal['prompts'])} calibration openings) held-out cost: KL={runs['cost'].kl:.3f} "
             f"ppl_ratio={runs['cost'].ppl_ratio:.3f}"]
    for name in ("baseline", "steered", "control"):
        j = runs[name]["judge"]
        lines.append(f"{name:>9}: VADER positive {j.positive_share:.3f} negative {j.negative_share:.3f} "
                     f"degenerate {runs[name]['degenerate']:.3f} | probe P(positive) {runs[name]['p'].mean():.3f}")
    for name in ("steered", "control"):
        lines += [f"  [{name}] {p}{t}" for p, t in list(zip(HELD_OUT_OPENINGS, runs[name]["texts"]))[:3]]
    return "\n".join(lines)


def test_default_recipe_moves_the_external_judge_within_the_cost_limits(vector, runs):
    print("\n" + _summary(vector, runs))
    base, steered = runs["baseline"]["judge"], runs["steered"]["judge"]
    assert runs["cost"].ppl_ratio <= PPL_LIMIT
    assert runs["steered"]["degenerate"] <= DEGENERATE_LIMIT
    assert steered.negative_share < base.negative_share
    assert steered.positive_share >= base.positive_share + 0.15  # well above chance (one prompt moves it 1/32)


@pytest.mark.xfail(strict=True, reason=(
    "issue 16 acceptance not met on Gemma 3 270M: on the 32 held-out openings the positive share "
    "goes 0.594 -> 0.812 (+0.219) at the calibrated coefficient 2.83 (perplexity ratio 1.139, KL "
    "0.119, no degenerate continuation; the calibration reached +0.250 on its 12 openings before the "
    "perplexity cap); at the cap (coefficient 3.36, ratio 1.21) +0.250 (benchmarks/README.md)"))
def test_default_recipe_reaches_the_target_shift(runs):
    base, steered = runs["baseline"]["judge"], runs["steered"]["judge"]
    assert steered.positive_share >= base.positive_share + TARGET


def test_random_same_norm_direction_does_not_make_text_positive(vector, runs):
    base, control = runs["baseline"]["judge"], runs["control"]["judge"]
    print(f"\nrandom direction at coeff {vector.coeff:.3f}: positive {base.positive_share:.3f} -> "
          f"{control.positive_share:.3f}, negative {base.negative_share:.3f} -> {control.negative_share:.3f}, "
          f"degenerate {runs['control']['degenerate']:.3f}")
    assert control.positive_share <= base.positive_share + CONTROL_LIMIT


@pytest.mark.xfail(strict=True, reason=(
    "issue 16 acceptance not met on Gemma 3 270M: a same-norm random direction at coefficient 2.83 "
    "drops the positive share 0.594 -> 0.031: its text degrades into fragments that VADER scores "
    "neutral (it does not turn positive: the test above)"))
def test_random_same_norm_direction_does_not_move_the_judge(runs):
    base, control = runs["baseline"]["judge"], runs["control"]["judge"]
    assert abs(control.positive_share - base.positive_share) <= CONTROL_LIMIT


def test_probe_judge_agrees(runs):
    """The probe judge reads the injected direction itself, so it is only an extra check."""
    base, steered, control = (float(runs[n]["p"].mean()) for n in ("baseline", "steered", "control"))
    assert steered >= base + 0.15 and steered >= control + 0.1


def test_kv_cache_equals_full_recompute_on_gemma(gemma, vector):
    """Greedy tokens with the KV cache equal TL's no-cache loop (full recompute each step); the
    exact logit-level check against an independent hook is in test_steer_apply.py (tiny model)."""
    prompts = ["Today the weather", "The meeting this morning was"]
    for positions in ("generated", [1, -1]):
        cached = steer.generate(gemma, prompts, vector, positions=positions, max_new_tokens=6, return_tokens=True)
        full = steer.generate(gemma, prompts, vector, positions=positions, max_new_tokens=6, return_tokens=True,
                              use_past_kv_cache=False)
        assert cached == full, positions


def test_per_row_vectors_equal_solo_runs_on_gemma(gemma, vector):
    prompts = ["I went to the store and", "Today", "The meeting this morning was about the new", "My phone"]
    rows = [vector, -vector, vector.random_like(seed=1), None]
    coeffs = [vector.coeff, vector.coeff, 0.5 * vector.coeff, 0.0]
    batch = steer.generate(gemma, prompts, rows, coeff=coeffs, max_new_tokens=8, return_tokens=True)
    solo = [steer.generate(gemma, [p], [v] if v is not None else None, coeff=[c], max_new_tokens=8,
                           return_tokens=True)[0] for p, v, c in zip(prompts, rows, coeffs)]
    assert batch == solo
    assert batch[0] != batch[1]  # the rows really were steered differently


def test_wrong_model_vector_is_refused(gemma, tiny):
    v = steer.compute(tiny, [("good", "bad")], layers=[1])
    with pytest.raises(ValueError, match="d_model 640"):
        steer.apply(gemma, v)
    fake = steer.SteeringVector({STEER_LAYER: np.zeros(640, dtype=np.float32)}, fingerprint="0" * 16)
    with pytest.raises(ValueError, match="fingerprint"):
        steer.apply(gemma, fake)
    with pytest.raises(ValueError, match="out of range"):
        steer.apply(gemma, fake, layers=[18], force=True)
