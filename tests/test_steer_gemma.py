"""Acceptance on the embedded Gemma 3 270M (issue 16): the default sentiment recipe (the class-mean
difference of the shipped pairs at every layer), calibrated to a behaviour shift on
``steer.evaluate.NEUTRAL_OPENINGS``, moves an external judge (VADER, which never sees an
activation) by >= 0.30 on held-out openings (``steer.judges.HELD_OUT_OPENINGS``, used neither to
build nor to calibrate the vector) within the cost limits; random directions of the same norm per
layer at the same coefficient, shaped like the activations, leave the judge where it was (mean
over seeds); isotropic ones do not make text positive but do move the judge (a strict xfail with
the measured numbers); the probe judge (it reads the injected direction) is an extra check.
Also: cached generation equals full recompute; per-row batches equal solo runs.

Everything expensive is computed once in module fixtures (the capture of the 300 sentiment
sentences, the calibration generations, one batched generation of the held-out openings under
every vector).
"""

import statistics

import numpy as np
import pytest

import steer
import steerlens
from steer.evaluate import NEUTRAL_OPENINGS, steering_cost
from steer.judges import HELD_OUT_OPENINGS, VaderJudge, degenerate_rate, judge_texts

pytestmark = pytest.mark.gemma

STEER_LAYER = 6  # a single layer, for the checks that need one vector of one layer
PROBE_LAYER = 10
NEW_TOKENS = 16
TARGET = 0.30  # issue 16: positive share up by >= 0.30 over unsteered
PPL_LIMIT, DEGENERATE_LIMIT, CONTROL_LIMIT = 1.30, 0.05, 0.05
SHAPED_SEEDS, ISOTROPIC_SEEDS = 8, 4  # random directions per kind (a share moves in steps of 1/32)


@pytest.fixture(scope="module")
def sentiment(gemma):
    """Mean-pooled resid_post of the 150 shipped sentiment pairs at every layer."""
    pairs = steerlens.data.load("sentiment")
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    labels = [1] * len(pairs) + [0] * len(pairs)
    return steerlens.capture(gemma, texts, "resid_post", pool="mean", labels=labels, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def probe(sentiment):
    from probes import LogisticProbe

    return LogisticProbe().fit(sentiment.at(PROBE_LAYER), sentiment.labels)


@pytest.fixture(scope="module")
def vector(gemma, sentiment):
    """The default recipe: steer.compute's mean_diff of mean-pooled pairs at every layer, calibrated
    to the target shift of VADER's positive share on the calibration openings, within the limits
    (the arguments of the tour and of ``steerlens steer compute --calibrate``)."""
    v = steer.mean_diff(sentiment)
    assert v.layers == list(range(gemma.cfg.n_layers))
    return steer.calibrate(gemma, v, target_shift=TARGET, judge=VaderJudge(), prompts=NEUTRAL_OPENINGS,
                           max_new_tokens=NEW_TOKENS, ppl_budget=PPL_LIMIT, max_degenerate=DEGENERATE_LIMIT,
                           start=1.0, steps=2)


def _probe_p(gemma, probe, prompts, texts):
    scored = [t if t.strip() else p + t for p, t in zip(prompts, texts)]
    acts = steerlens.capture(gemma, scored, "resid_post", layers=[PROBE_LAYER], pool="mean", progress=False)
    return probe.predict_proba(acts.at(PROBE_LAYER))[:, 1]


@pytest.fixture(scope="module")
def runs(gemma, probe, sentiment, vector):
    """Held-out openings: unsteered, steered, and random directions of the vector's norm per layer
    (activation-shaped and isotropic seeds), all at the calibrated coefficient, in one call."""
    prompts, k = list(HELD_OUT_OPENINGS), len(HELD_OUT_OPENINGS)
    rows = {"baseline": None, "steered": vector}
    rows |= {f"shaped{s}": vector.random_like(seed=s, acts=sentiment) for s in range(SHAPED_SEEDS)}
    rows |= {f"isotropic{s}": vector.random_like(seed=s) for s in range(ISOTROPIC_SEEDS)}
    texts = steer.generate(gemma, prompts * len(rows), [v for v in rows.values() for _ in prompts],
                           coeff=[0.0 if v is None else vector.coeff for v in rows.values() for _ in prompts],
                           max_new_tokens=NEW_TOKENS, batch_size=64)
    out = {}
    for i, name in enumerate(rows):
        t = texts[i * k:(i + 1) * k]
        out[name] = {"texts": t, "judge": judge_texts(VaderJudge(), [x if x.strip() else p + x for p, x in zip(prompts, t)]),
                     "degenerate": degenerate_rate(t)}
        if name in ("baseline", "steered", "isotropic0"):
            out[name]["p"] = _probe_p(gemma, probe, prompts, t)
    out["cost"] = steering_cost(gemma, vector, vector.coeff)
    return out


def _shifts(runs, kind: str, n: int) -> list[float]:
    base = runs["baseline"]["judge"].positive_share
    return [runs[f"{kind}{s}"]["judge"].positive_share - base for s in range(n)]


def _summary(vector, runs) -> str:
    cal = vector.info["calibration"]
    lines = [f"coeff={vector.coeff:.3f} (calibration: reached={cal['reached']} shift={cal['shift']:.3f} on "
             f"{len(cal['prompts'])} calibration openings) held-out cost: KL={runs['cost'].kl:.3f} "
             f"ppl_ratio={runs['cost'].ppl_ratio:.3f}"]
    for name in ("baseline", "steered", "isotropic0"):
        j = runs[name]["judge"]
        lines.append(f"{name:>10}: VADER positive {j.positive_share:.3f} negative {j.negative_share:.3f} "
                     f"degenerate {runs[name]['degenerate']:.3f} | probe P(positive) {runs[name]['p'].mean():.3f}")
    for kind, n in (("shaped", SHAPED_SEEDS), ("isotropic", ISOTROPIC_SEEDS)):
        d = _shifts(runs, kind, n)
        lines.append(f"{kind:>10}: positive-share shift per seed {[round(x, 3) for x in d]}, mean {statistics.mean(d):+.3f}")
    lines += [f"  [steered] {p}{t}" for p, t in list(zip(HELD_OUT_OPENINGS, runs["steered"]["texts"]))[:3]]
    return "\n".join(lines)


def test_default_recipe_moves_the_external_judge_within_the_cost_limits(vector, runs):
    print("\n" + _summary(vector, runs))
    base, steered = runs["baseline"]["judge"], runs["steered"]["judge"]
    assert vector.info["calibration"]["reached"]
    assert runs["cost"].ppl_ratio <= PPL_LIMIT
    assert runs["steered"]["degenerate"] <= DEGENERATE_LIMIT
    assert steered.negative_share < base.negative_share
    assert steered.positive_share >= base.positive_share + TARGET


def test_random_directions_shaped_like_the_activations_leave_the_judge(runs):
    """Same norm per layer, same coefficient, drawn where the sentence activations vary: the mean
    shift over seeds is within the limit (one seed alone moves by up to 3 of the 32 openings)."""
    d = _shifts(runs, "shaped", SHAPED_SEEDS)
    print(f"\nactivation-shaped random directions: shifts {d}")
    assert abs(statistics.mean(d)) <= CONTROL_LIMIT
    assert max(d) < TARGET / 2  # no seed comes near the steering effect


def test_isotropic_random_directions_do_not_make_text_positive(runs):
    base = runs["baseline"]["judge"]
    for s in range(ISOTROPIC_SEEDS):
        control = runs[f"isotropic{s}"]["judge"]
        assert control.positive_share <= base.positive_share + CONTROL_LIMIT, s


@pytest.mark.xfail(strict=True, reason=(
    "issue 16's control bar read with isotropic directions, not met on Gemma 3 270M: at the calibrated "
    "coefficient 0.21 (all 18 layers) 4 isotropic directions of the same norm per layer lower the positive "
    "share by 0.125-0.188 (mean -0.164). They cost about 3x the vector's KL (bench_steering.py --recipes: "
    "0.60 against 0.21 at coefficient 0.25), and scaled down to the vector's KL they still lower it (mean "
    "-0.074 over 8 seeds): the unsteered continuations of these openings are cheerful, and perturbing them "
    "makes them plainer (benchmarks/README.md)"))
def test_isotropic_random_directions_do_not_move_the_judge(runs):
    assert abs(statistics.mean(_shifts(runs, "isotropic", ISOTROPIC_SEEDS))) <= CONTROL_LIMIT


def test_probe_judge_agrees(runs):
    """The probe judge reads the injected direction itself, so it is only an extra check."""
    base, steered, control = (float(runs[n]["p"].mean()) for n in ("baseline", "steered", "isotropic0"))
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
