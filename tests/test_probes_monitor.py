"""ProbeMonitor on the tiny model: one score per generated token, equality with a full forward
and with capture, batches, callbacks, and no hook left behind."""

import numpy as np
import pytest
import torch

import steerlens
from probes import LogisticProbe, MeanDiffProbe, ProbeMonitor
from steerlens.hooks import count_hooks

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
TEXTS = ["hello world", "foo bar baz", "abc", "xyz q", "tokens and more", "a b c d"] * 4


@pytest.fixture(scope="module")
def two_probes(tiny):
    acts = steerlens.capture(tiny, TEXTS, [H1, H2], progress=False)
    y = np.arange(len(TEXTS)) % 2
    return {"p1": (H1, LogisticProbe(C=1.0).fit(acts[H1], y)), "p2": (H2, MeanDiffProbe().fit(acts[H2], y))}


def hook_count(model):
    return count_hooks(model), sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


def test_one_score_per_generated_token_and_equal_to_full_forward(tiny, two_probes):
    before = hook_count(tiny)
    with ProbeMonitor(tiny, two_probes, output="logit") as mon:
        out = tiny.generate("hello", max_new_tokens=7, do_sample=False, verbose=False, return_type="tokens", stop_at_eos=False)
    assert hook_count(tiny) == before
    n_prompt, n_gen = len(tiny.tokenizer("hello")["input_ids"]), out.shape[1] - len(tiny.tokenizer("hello")["input_ids"])
    assert n_gen == 7
    _, cache = tiny.run_with_cache(out)  # one uncached forward over prompt + generated tokens
    for name, (hook, probe) in two_probes.items():
        assert mon.scores[name].shape == (1, n_gen)
        assert mon.prompt_scores[name].shape == (1, n_prompt)
        full = torch.from_numpy(probe.decision_function(cache[hook][0]))
        torch.testing.assert_close(mon.token_scores[name][0], full[:-1], atol=1e-4, rtol=1e-4)
        # the score of generated token i is read where the model produced it
        torch.testing.assert_close(mon.scores[name][0], full[n_prompt - 1 : -1], atol=1e-4, rtol=1e-4)


def test_plain_forward_equals_capture(tiny, two_probes):
    text = "the quick brown fox"
    with ProbeMonitor(tiny, two_probes) as mon:
        tiny(text)
    acts = steerlens.capture(tiny, [text], [H1, H2], pool="all", progress=False)
    for name, (hook, probe) in two_probes.items():
        expect = torch.from_numpy(probe.predict_proba(acts[hook])[:, 1])
        torch.testing.assert_close(mon.token_scores[name][0], expect, atol=1e-5, rtol=1e-4)
        assert len(mon.runs) == 1


def test_batched_generation_and_callback(tiny, two_probes):
    seen = []
    with ProbeMonitor(tiny, two_probes, callback=lambda step, s: seen.append((step, {k: v.clone() for k, v in s.items()}))) as mon:
        tiny.generate(["hi", "a longer prompt"], max_new_tokens=4, do_sample=False, verbose=False, stop_at_eos=False)
    assert [s for s, _ in seen] == [0, 1, 2, 3]
    for name in two_probes:
        assert mon.scores[name].shape == (2, 4)
        assert ((mon.scores[name] >= 0) & (mon.scores[name] <= 1)).all()  # probabilities
        torch.testing.assert_close(torch.stack([d[name] for _, d in seen], 1), mon.scores[name])


def test_without_kv_cache_each_step_is_a_run(tiny, two_probes):
    with ProbeMonitor(tiny, two_probes) as mon:
        tiny.generate("hello", max_new_tokens=3, do_sample=False, verbose=False, use_past_kv_cache=False, stop_at_eos=False)
    assert len(mon.runs) == 3
    assert mon.token_scores["p1"].shape == (1, len(tiny.tokenizer("hello")["input_ids"]) + 2)


def test_hooks_removed_after_exception(tiny, two_probes):
    before = hook_count(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with ProbeMonitor(tiny, two_probes) as mon:
            tiny("some text")
            assert hook_count(tiny) != before  # active inside
            raise RuntimeError("boom")
    assert hook_count(tiny) == before
    assert len(mon.runs) == 1
    # an error raised inside a hook (wrong width at run time) also leaves nothing behind
    narrow = LogisticProbe(C=1.0).fit(np.random.default_rng(0).standard_normal((20, 64)), np.arange(20) % 2)
    narrow.coef_ = narrow.coef_[:, :32]
    with pytest.raises(ValueError, match="width"):
        with ProbeMonitor(tiny, {"bad": ("blocks.1.attn.hook_z", narrow)}):
            tiny("text")
    assert hook_count(tiny) == before


def test_monitor_errors(tiny, two_probes):
    probe = two_probes["p1"][1]
    with pytest.raises(ValueError, match="does not know its hook"):
        ProbeMonitor(tiny, {"x": LogisticProbe(C=1.0).fit(np.eye(4, 64), [0, 1, 0, 1])})
    with pytest.raises(ValueError, match="unknown hook"):
        ProbeMonitor(tiny, {"x": ("blocks.1.hook_nonsense", probe)})
    with pytest.raises(ValueError, match="one full name"):
        ProbeMonitor(tiny, {"x": ("resid_post", probe)})
    with pytest.raises(ValueError, match="does not match"):
        ProbeMonitor(steerlens.tiny_model(n_layers=3, d_model=32), {"x": (H1, probe)})
    with pytest.raises(ValueError, match="empty"):
        ProbeMonitor(tiny, {})
    with pytest.raises(ValueError, match="output"):
        ProbeMonitor(tiny, two_probes, output="odds")
    mon = ProbeMonitor(tiny, two_probes)
    with pytest.raises(RuntimeError, match="no scores"):
        mon.scores
