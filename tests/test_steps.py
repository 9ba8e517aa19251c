"""The core step tracker and hook dispatcher: what a forward call looks like to an intervention,
hook hygiene, and isolation between threads (steering, monitors and seeded sampling in 8 threads
each equal to the same call run alone)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import steer
from probes.estimators import LogisticProbe
from probes.monitor import ProbeMonitor
from steer.vector import SteeringVector
from steerlens.steps import current_step, exclusive, intervene
from steerlens.tokens import tokenize

PROMPTS = ["hello there, my friend", "hi", "the cat sat on the", "a b"]


def no_hooks_left(model) -> bool:
    points = set(model.hook_dict.values())
    return (all(len(hp._forward_hooks) == 0 for hp in points)
            and len(model.original_model._forward_pre_hooks) == 0)


def vec(seed, layer=1, norm=2.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(64, generator=g)
    return SteeringVector({layer: v * norm / v.norm()})


def test_step_of_a_left_padded_prompt_and_its_decode_steps(tiny):
    ids, mask, lengths = tokenize(tiny, PROMPTS, padding_side="left")
    seen = []
    with intervene(tiny, {"blocks.0.hook_resid_post": lambda x, step: seen.append(step)}):
        steer.generate(tiny, PROMPTS, max_new_tokens=3, stop_at_eos=False)
    prompt, first, second = seen
    assert prompt.new_sequence and prompt.past == 0 and prompt.seq == ids.shape[1]
    assert torch.equal(prompt.real, mask.bool()) and not prompt.generated.any()
    assert torch.equal(prompt.prompt_len, lengths)
    # token index counts real tokens from each row's first one (left padding skipped)
    assert torch.equal(prompt.index[mask.bool()], torch.cat([torch.arange(n) for n in lengths.tolist()]))
    assert not first.new_sequence and first.past == ids.shape[1] and first.seq == 1
    assert first.generated.all() and torch.equal(first.index[:, 0], lengths)
    assert second.past == ids.shape[1] + 1 and torch.equal(second.index[:, 0], lengths + 1)
    assert current_step(tiny) is None and no_hooks_left(tiny)


def test_without_cache_the_prompt_columns_are_recognised(tiny):
    ids, mask, _ = tokenize(tiny, PROMPTS[:2], padding_side="left")
    seen = []
    with intervene(tiny, {"blocks.0.hook_resid_post": lambda x, step: seen.append(step)}):
        steer.generate(tiny, PROMPTS[:2], max_new_tokens=3, stop_at_eos=False, use_past_kv_cache=False)
    assert [s.new_sequence for s in seen] == [True, False, False]
    assert [int(s.generated.sum()) for s in seen] == [0, 2, 4]  # one more generated column per step
    assert all(s.width == ids.shape[1] for s in seen)


def test_hooks_nest_and_are_removed_after_an_exception(tiny):
    order = []
    with intervene(tiny, {"blocks.0.hook_resid_post": lambda x, s: order.append("outer")}):
        with pytest.raises(RuntimeError, match="boom"):
            with intervene(tiny, {"blocks.0.hook_resid_post": lambda x, s: order.append("inner")}):
                tiny("hi")
                raise RuntimeError("boom")
        tiny("hi")
    assert order == ["outer", "inner", "outer"]
    assert no_hooks_left(tiny)
    with pytest.raises(ValueError, match="unknown hook"):
        with intervene(tiny, {"blocks.0.hook_nothing": lambda x, s: None}):
            pass
    assert no_hooks_left(tiny)


def test_another_thread_does_not_see_this_threads_hooks(tiny):
    ids, mask, _ = tokenize(tiny, PROMPTS[:1])
    with torch.inference_mode():
        plain = tiny(ids)
    entered, done = threading.Event(), threading.Event()
    got = {}

    def steered():
        with steer.apply(tiny, vec(0, norm=5.0)):
            entered.set()
            done.wait(30)

    t = threading.Thread(target=steered)
    t.start()
    assert entered.wait(30)
    with torch.inference_mode():
        got["other"] = tiny(ids)  # runs while the other thread's steering block is active
    done.set()
    t.join(30)
    assert torch.equal(got["other"], plain)
    assert no_hooks_left(tiny)


@pytest.fixture(scope="module")
def probe(tiny):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 64)).astype(np.float32)
    p = LogisticProbe().fit(X, (X[:, 0] > 0).astype(int))
    p.meta_ = {"hook": "blocks.1.hook_resid_post", "layer": 1, "method": "logistic"}
    return p


def _call(model, probe, kind: int, i: int):
    """One of the mixed calls: unsteered, steered (two vectors, several coefficients, positions),
    seeded sampling, per-row vectors, and a probe monitor."""
    prompt = [PROMPTS[i % 4]]
    kw = dict(max_new_tokens=4, stop_at_eos=False, return_tokens=True)
    if kind == 0:
        return steer.generate(model, prompt, **kw)
    if kind == 1:
        return steer.generate(model, prompt, vec(1), coeff=1.0 + i % 3, **kw)
    if kind == 2:
        return steer.generate(model, prompt, vec(2, layer=0), coeff=-3.0, positions="generated", **kw)
    if kind == 3:
        return steer.generate(model, prompt, do_sample=True, seed=i, **kw)
    if kind == 4:
        return steer.generate(model, prompt, vec(3), coeff=2.0, do_sample=True, seed=100 + i, top_k=20, **kw)
    if kind == 5:
        return steer.generate(model, PROMPTS[:2], [vec(4), None], coeff=[4.0, 0.0], **kw)
    with ProbeMonitor(model, {"p": probe}) as mon:
        toks = steer.generate(model, prompt, vec(5), coeff=1.5, **kw)
    return toks, mon.scores["p"].tolist()


def test_eight_threads_of_mixed_calls_each_equal_the_call_run_alone(tiny, probe):
    calls = [(t, k) for t in range(8) for k in range(20)]
    alone = {(t, k): _call(tiny, probe, (t + k) % 7, t * 20 + k) for t, k in calls}
    rng_before = torch.random.get_rng_state()
    barrier = threading.Barrier(8)

    def worker(t):
        barrier.wait(30)
        return [(t, k, _call(tiny, probe, (t + k) % 7, t * 20 + k)) for k in range(20)]

    with ThreadPoolExecutor(8) as pool:
        results = [r for rows in pool.map(worker, range(8), timeout=600) for r in rows]
    assert len(results) == 160
    wrong = [(t, k) for t, k, got in results if got != alone[(t, k)]]
    assert wrong == []
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # seeded sampling never touches it
    assert no_hooks_left(tiny)


def test_a_weight_edit_refuses_while_other_threads_steer_and_blocks_them_while_it_runs(tiny):
    entered, done = threading.Event(), threading.Event()

    def steered():
        with steer.apply(tiny, vec(0)):
            entered.set()
            done.wait(30)

    t = threading.Thread(target=steered)
    t.start()
    assert entered.wait(30)
    try:
        with pytest.raises(RuntimeError, match="other threads"):
            with exclusive(tiny, "a ROME edit"):
                pass
    finally:
        done.set()
        t.join(30)
    errors = []
    with exclusive(tiny, "a ROME edit"):
        with steer.apply(tiny, vec(0)):  # the editing thread itself may hook the model
            tiny("hi")
        th = threading.Thread(target=lambda: _record(errors, lambda: steer.generate(tiny, "hi", max_new_tokens=2)))
        th.start()
        th.join(30)
    assert len(errors) == 1 and "being changed by a ROME edit" in str(errors[0])
    steer.generate(tiny, "hi", max_new_tokens=2)  # free again
    assert no_hooks_left(tiny)


def _record(errors, fn):
    try:
        fn()
    except RuntimeError as e:
        errors.append(e)


def test_a_rome_edit_refuses_while_another_thread_steers(tiny):
    import editing
    from editing.rome import as_request

    entered, done = threading.Event(), threading.Event()

    def steered():
        with steer.apply(tiny, vec(0)):
            entered.set()
            done.wait(60)

    request = as_request(subject="Bob", prompt="Bob lives in the city of", target_true=" Paris",
                                 target_new=" Rome")
    stats = editing.key_statistics(tiny, 0, corpus=["Bob lives in Paris. Ann lives in Rome."] * 4, n_tokens=100,
                                   cache=False, progress=False)
    before = editing.sites.w_out(tiny, 0)
    t = threading.Thread(target=steered)
    t.start()
    assert entered.wait(30)
    try:
        with pytest.raises(RuntimeError, match="in other threads"):
            editing.edit(tiny, request, layer=0, stats=stats, config=editing.RomeConfig(n_prefixes=0, n_value_prefixes=0, steps=2),
                         progress=False)
    finally:
        done.set()
        t.join(30)
    assert torch.equal(editing.sites.w_out(tiny, 0), before)  # nothing was changed
    assert no_hooks_left(tiny)
