"""steerlens.neutral: the neutral texts, the one next-token forward over them, perplexity and KL."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

import steerlens
from steerlens.neutral import NEUTRAL_TEXTS, kl, next_token_logprobs, next_tokens, perplexity
from steerlens.steps import intervene
from steerlens.tokens import encode

DATA = Path(steerlens.__file__).parent / "data"
TEXTS = ["the cat sat on the mat.", "a b c d e f g", "hello world, this is a test", "x"]


def _words(s: str) -> set[str]:
    return set(re.findall(r"[a-z]+(?:-[a-z]+)*", s.lower()))


def _fact_names() -> set[str]:
    """Every subject (edited or neighbour) and object named in the shipped ``facts`` records."""
    names = set()
    for line in (DATA / "facts.jsonl").read_text().splitlines():
        r = json.loads(line)
        names |= {r["subject"], r["target_true"].strip(), r["target_new"].strip()}
        pre, post = r["prompt"].split(r["subject"], 1)
        for p in r["neighbourhood"]:  # the same template with another subject
            assert p.endswith(post), p
            n = p[: len(p) - len(post)]
            names.add(n[len(pre) :] if n.startswith(pre) else n)
    return names


def test_neutral_texts_name_no_fact_and_carry_no_sentiment():
    assert len(NEUTRAL_TEXTS) == 16 and len(set(NEUTRAL_TEXTS)) == 16
    names = _fact_names()
    assert {"Paris", "France", "Marseille"} <= names  # the check sees neighbours too
    for t in NEUTRAL_TEXTS:
        hits = [n for n in names if re.search(rf"\b{re.escape(n.lower())}\b", t.lower())]
        assert not hits, (t, hits)
    # words only one side of the sentiment pairs uses are the evaluative ones ("fresh", "awful")
    pairs = [json.loads(line) for line in (DATA / "sentiment.jsonl").read_text().splitlines()]
    pos = set().union(*(_words(p["positive"]) for p in pairs))
    neg = set().union(*(_words(p["negative"]) for p in pairs))
    one_sided = pos ^ neg
    assert {"fresh", "awful", "delicious", "boring"} <= one_sided
    for t in NEUTRAL_TEXTS:
        assert not _words(t) & one_sided, (t, _words(t) & one_sided)


def test_rows_are_the_positions_with_a_next_token(tiny):
    lp = next_token_logprobs(tiny, TEXTS)
    lengths = [len(encode(tiny, t)) for t in TEXTS]
    assert lp.shape == (sum(n - 1 for n in lengths), tiny.cfg.d_vocab) and lp.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(len(lp)), atol=1e-5)
    targets = next_tokens(tiny, TEXTS)
    assert targets.tolist() == [t for text in TEXTS for t in encode(tiny, text)[1:]]
    # equal to the full forward of each text alone, its last position (no next token) dropped
    rows = []
    for t in TEXTS:
        ids = torch.tensor([encode(tiny, t)])
        rows.append(tiny(ids, return_type="logits")[0, :-1].float().log_softmax(-1))
    assert torch.allclose(lp, torch.cat(rows), atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batching_and_padding_change_nothing(tiny, batch_size):
    # within float rounding (matrix products of other shapes), never a pad seen
    got, together = next_token_logprobs(tiny, TEXTS, batch_size=batch_size), next_token_logprobs(tiny, TEXTS)
    assert got.shape == together.shape and torch.allclose(got, together, atol=1e-5)


def test_hooks_active_in_the_calling_context_fire(tiny):
    """An intervention block around the call (steering, an eraser) changes what it measures."""
    base = next_token_logprobs(tiny, TEXTS)
    shift = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def add(x, step):
        assert step is not None  # the step tracker saw the forward call
        return x + shift

    with intervene(tiny, {"blocks.1.hook_resid_post": add}):
        steered = next_token_logprobs(tiny, TEXTS)
        rows = [tiny(torch.tensor([encode(tiny, t)]), return_type="logits")[0, :-1].float().log_softmax(-1)
                for t in TEXTS]
    assert not torch.allclose(steered, base, atol=1e-3)
    assert torch.allclose(steered, torch.cat(rows), atol=1e-5)
    assert kl(base, steered) > 0
    assert torch.equal(next_token_logprobs(tiny, TEXTS), base)  # nothing left behind


def test_perplexity_and_kl_formulas():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 7, generator=g).log_softmax(-1)
    q = torch.randn(5, 7, generator=g).log_softmax(-1)
    y = torch.tensor([0, 3, 6, 2, 2])
    assert perplexity(p, y) == pytest.approx(math.exp(-float(p[torch.arange(5), y].mean())), rel=1e-6)
    uniform = torch.full((4, 10), -math.log(10))
    assert perplexity(uniform, torch.zeros(4, dtype=torch.long)) == pytest.approx(10.0, rel=1e-6)
    want = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl(p, q) == pytest.approx(want, rel=1e-5)
    assert kl(p, p) == pytest.approx(0.0, abs=1e-7)
    assert kl(q, p) != pytest.approx(kl(p, q), rel=1e-3)  # KL(reference ‖ current), not symmetric
    with pytest.raises(ValueError, match="one shape"):
        kl(p, q[:4])
    with pytest.raises(ValueError, match="targets"):
        perplexity(p, y[:4])


def test_bad_texts(tiny):
    with pytest.raises(ValueError, match="longer than the model's context"):
        next_token_logprobs(tiny, ["fine", "n" * 300])
    with pytest.raises(ValueError, match="empty"):
        next_token_logprobs(tiny, [])
    with pytest.raises(ValueError, match="batch_size"):
        next_token_logprobs(tiny, TEXTS, batch_size=0)
