"""Causal tracing, evaluation, reports, experiments and the ``steerlens edit`` CLI on tiny models."""

import json

import pytest
import torch

from editing import sites
from editing.covariance import key_statistics
from editing.evaluation import evaluate, evaluate_edits, n_gram_entropy
from editing.experiment import run_experiment
from editing.report import write_report
from editing.rome import RomeConfig, as_request
from editing.tracing import causal_trace
from steerlens.hooks import count_hooks
from steerlens.tokens import encode

FAST = RomeConfig(n_prefixes=3, prefix_tokens=4, n_value_prefixes=2, steps=4, n_tokens=400)
CORPUS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine stitches",
          "Bob lives in the city of Paris and works in a bakery", "many hands make light work"] * 4
REQS = [
    as_request(id="bob", prompt="Bob lives in the city of", subject="Bob", target_true=" Paris", target_new=" Rome",
               paraphrases=("Where does Bob live? In the city of", "Bob's home is the city of"),
               neighbourhood=("Alice lives in the city of", "Eve lives in the city of")),
    as_request(id="ann", prompt="Ann works as a", subject="Ann", target_true=" nurse", target_new=" pilot",
               paraphrases=("By profession, Ann is a",), neighbourhood=("Tom works as a",)),
]


def test_causal_trace_shapes_determinism_and_full_restoration(tiny, tmp_path):
    hooks = count_hooks(tiny)
    a = causal_trace(tiny, "Bob lives in the city of", "Bob", samples=3, seed=1, progress=False)
    b = causal_trace(tiny, "Bob lives in the city of", "Bob", samples=3, seed=1, progress=False)
    assert count_hooks(tiny) == hooks
    T = len(encode(tiny, "Bob lives in the city of"))
    assert set(a.scores) == {"resid", "mlp", "attn"}
    assert all(v.shape == (T, 3) for v in a.scores.values())
    assert all(torch.equal(a.scores[k], b.scores[k]) for k in a.scores)
    assert a.subject_span == (1, 4)  # BOS, then the three bytes of "Bob"
    # restoring the last token's residual after the last block restores the clean output
    assert a.scores["resid"][-1, -1] == pytest.approx(a.p_clean, rel=1e-4)
    # restoring anything before the subject changes nothing (it is not corrupted)
    assert torch.allclose(a.scores["resid"][0], torch.full((3,), a.p_corrupt), rtol=1e-4)
    c = causal_trace(tiny, "Bob lives in the city of", "Bob", samples=3, seed=2, progress=False)
    assert c.p_corrupt != a.p_corrupt
    assert set(a.last_subject_curve()) == {"resid", "mlp", "attn"}
    assert a.save_html(tmp_path / "t.html") == tmp_path / "t.html"
    page = (tmp_path / "t.html").read_text()
    assert page.count("plotly.js v") == 1 and page.count('class="plotly-graph-div"') == 4  # 3 heatmaps + curve


def test_causal_trace_bad_input(tiny):
    with pytest.raises(ValueError, match="does not occur"):
        causal_trace(tiny, "Bob lives in", "Carol", progress=False)
    with pytest.raises(ValueError, match="kinds"):
        causal_trace(tiny, "Bob lives in", "Bob", kinds=["embed"], progress=False)
    with pytest.raises(ValueError, match="tokenises to nothing"):
        causal_trace(tiny, "Bob lives in", "Bob", target="", progress=False)


def test_causal_trace_prompt_longer_than_the_context(tiny):
    hooks = count_hooks(tiny)
    with pytest.raises(ValueError, match=r"prompt is 305 tokens long: 305 tokens do not fit .* context of 256 .*n_ctx"):
        causal_trace(tiny, "Bob " + "x" * 300, "Bob", progress=False)
    assert count_hooks(tiny) == hooks


@pytest.mark.parametrize("change, match", [
    (dict(prompt="Bob " + "x" * 300), r"requests\[1\]\.prompt is 305 tokens long and its target_true adds 6"),
    (dict(paraphrases=("Bob " + "y" * 300,)), r"requests\[1\]\.paraphrases\[0\] is 305 tokens long"),
    (dict(neighbourhood=("Tom works as a", "z" * 300)), r"requests\[1\]\.neighbourhood\[1\] is 301 tokens"),
    (dict(prompt="Bob " + "x" * 240), r"requests\[1\]\.prompt is 245 tokens long and fluency_tokens adds 32"),
])
def test_evaluation_prompt_longer_than_the_context(tiny, change, match):
    import dataclasses

    reqs = [REQS[0], dataclasses.replace(REQS[1], **change)]
    saved = sites.down_proj(tiny, 1)[0].detach().clone()
    with pytest.raises(ValueError, match=match + ".* context of 256"):
        evaluate_edits(tiny, reqs, layer=1, stats=object(), config=FAST, fluency_tokens=32, progress=False)
    with pytest.raises(ValueError, match=match):
        evaluate(tiny, reqs, fluency_tokens=32)
    assert torch.equal(sites.down_proj(tiny, 1)[0], saved)
    with pytest.raises(ValueError, match=r"neutral_texts\[1\] is 301 tokens"):
        evaluate(tiny, REQS, neutral_texts=["fine", "n" * 300], fluency_tokens=0)


def test_n_gram_entropy():
    assert n_gram_entropy("a b a b a b a b a b") < n_gram_entropy("the cat sat on a mat while dogs ran past it")
    # 3 distinct bigrams once each: H2 = log2(3); 2 distinct trigrams: H3 = 1
    import math

    assert n_gram_entropy("x y z w") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * math.log2(2)) / 2)
    assert n_gram_entropy("") == 0.0


def test_evaluate_unedited(tiny):
    ev, ref = evaluate(tiny, REQS, fluency_tokens=8, fluency_samples=1)
    assert len(ev.facts) == 2 and ev.kl is None and ev.perplexity > 1
    assert ev.facts[0].efficacy in (0.0, 1.0) and 0 <= ev.facts[0].paraphrase <= 1
    assert ev.facts[0].fluency is not None
    ev2, _ = evaluate(tiny, REQS, reference=ref, fluency_tokens=0)
    assert ev2.kl == pytest.approx(0.0, abs=1e-6)
    s = ev.summary()
    assert {"efficacy", "paraphrase", "neighbourhood", "fluency", "perplexity", "kl", "true_in_top10"} <= set(s)


def test_neutral_perplexity_and_kl_are_the_ones_steering_reports(tiny):
    """Editing and steering measure neutral text with the one core forward (steerlens.neutral):
    same default texts, same perplexity, and the same KL for the same change of the model."""
    import editing.evaluation
    import steer
    import steer.evaluate
    from steer.vector import SteeringVector
    from steerlens import neutral

    assert steer.evaluate.NEUTRAL_TEXTS is neutral.NEUTRAL_TEXTS is editing.evaluation.NEUTRAL_TEXTS
    texts = ["the cat sat on the mat.", "a b c d e f g", "hello world, this is a test"]
    ev, ref = evaluate(tiny, REQS, neutral_texts=texts, fluency_tokens=0)
    # not a constant vector: GPT-2's LayerNorms subtract the mean, so ones·c would change nothing (KL ~ ±1e-8)
    vec = SteeringVector({1: torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))}, method="test")
    cost = steer.evaluate.steering_cost(tiny, vec, 2.0, texts=texts)
    with steer.apply(tiny, vec, coeff=2.0):
        steered, _ = evaluate(tiny, REQS, reference=ref, neutral_texts=texts, fluency_tokens=0)
    assert steered.perplexity == pytest.approx(cost.ppl, rel=1e-6)
    assert steered.perplexity / ev.perplexity == pytest.approx(cost.ppl_ratio, rel=1e-6)
    assert steered.kl == pytest.approx(cost.kl, rel=1e-5) and cost.kl > 1e-3


@pytest.mark.parametrize("mode, stacked", [("rewrite", False), ("rewrite", True), ("erase", False)])
def test_evaluate_edits_restores_weights_and_reports(tiny, tmp_path, mode, stacked):
    stats = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=400, cache=False, progress=False)
    saved = [sites.down_proj(tiny, L)[0].detach().clone() for L in range(3)]
    hooks = count_hooks(tiny)
    rep = evaluate_edits(tiny, REQS, mode=mode, stacked=stacked, layer=1, stats=stats, config=FAST,
                         fluency_tokens=8, fluency_samples=1, progress=False)
    same = [torch.equal(sites.down_proj(tiny, L)[0], saved[L]) for L in range(3)]
    if stacked:
        assert (sites.down_proj(tiny, 1)[0] - saved[1]).abs().max() <= 1e-6
    else:
        assert all(same)
    assert count_hooks(tiny) == hooks
    assert len(rep.after.facts) == 2 and len(rep.edits) == 2 and rep.after.kl is not None
    html = write_report(rep, tmp_path / "r")
    assert html == tmp_path / "r" / "report.html"
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["mode"] == mode and set(data["summary"]) == {"before", "after"}
    page = html.read_text()
    assert "<table>" in page and page.count("plotly.js v") == 1 and page.count('class="plotly-graph-div"') == 2
    assert f"<tr><td>{REQS[0].prompt}</td><td>&#x27; Paris&#x27;" in page  # the first edit's row, escaped


def test_run_experiment_jsonl_and_cli(tiny, tmp_path):
    from typer.testing import CliRunner

    from steerlens.app.cli import app
    from steerlens.models import cache_dir

    exp = tmp_path / "exp.jsonl"
    exp.write_text("\n".join(json.dumps({"prompt": r.prompt, "subject": r.subject, "target_true": r.target_true,
                                         "target_new": r.target_new, "paraphrases": list(r.paraphrases)}) for r in REQS))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS))
    rep = run_experiment(exp, model=tiny, out=tmp_path / "out", progress=False, layer=1, corpus=str(corpus),
                         n_tokens=300, fluency_tokens=4, config={"steps": 3, "n_prefixes": 2, "prefix_tokens": 4})
    assert len(rep.edits) == 2 and (tmp_path / "out" / "report.html").is_file()

    spec = tmp_path / "spec.toml"
    spec.write_text(f'mode = "erase"\nlayer = 1\nfluency_tokens = 4\nn_tokens = 300\ncorpus = "{corpus}"\n'
                    f'config = {{ steps = 3, n_prefixes = 2, prefix_tokens = 4 }}\nedits = [{{ prompt = "Bob lives in the city of", subject = "Bob", target_true = " Paris" }}]\n')
    tiny_dir = cache_dir() / "tiny" / tiny.cfg.model_name
    res = CliRunner().invoke(app, ["edit", "run", str(spec), "--model", str(tiny_dir), "--out", str(tmp_path / "cli"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{\n"):])["mode"] == "erase"
    res = CliRunner().invoke(app, ["edit", "trace", "Bob lives in the city of", "--subject", "Bob", "--model", str(tiny_dir),
                                   "--samples", "2", "--out", str(tmp_path / "trace.html"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "trace.json").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"edits": [{"prompt": "x"}]}))
    with pytest.raises(ValueError, match="lacks"):
        run_experiment(bad, model=tiny, progress=False)


def test_cli_edit_run_with_the_shipped_corpus(tiny, tmp_path, monkeypatch):
    """``--corpus shipped`` (README) names the shipped datasets' text, not a file."""
    from typer.testing import CliRunner

    from editing.covariance import cache_path, corpus_hash, shipped_corpus
    from steerlens.app.cli import app
    from steerlens.models import cache_dir

    monkeypatch.chdir(tmp_path)  # no file called "shipped" here
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"layer": 1, "fluency_tokens": 4, "config": {"steps": 2, "n_prefixes": 2, "prefix_tokens": 4},
                                "edits": [{"prompt": "Bob lives in the city of", "subject": "Bob",
                                           "target_true": " Paris", "target_new": " Rome"}]}))
    tiny_dir = cache_dir() / "tiny" / tiny.cfg.model_name
    res = CliRunner().invoke(app, ["edit", "run", str(spec), "--model", str(tiny_dir), "--corpus", "shipped",
                                   "--n-tokens", "500", "--out", str(tmp_path / "cli"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert cache_path(tiny, 1, corpus_hash(shipped_corpus(), 0), 500, 128).is_file()
