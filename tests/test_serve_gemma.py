"""Serving acceptance on the embedded Gemma 3 270M with the real ``openai`` client against a
server on 127.0.0.1: a steered completion differs from the unsteered one and equals in-process
steering (greedy and seeded sampling); 16 staggered concurrent requests mixing vectors,
coefficients, positions, monitors and sampling each equal the same request run alone; streaming
returns the same text and probe scores."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import openai
import pytest

import steer
import steerlens
from steer.evaluate import NEUTRAL_OPENINGS
from steer.serve import Server, build

pytestmark = pytest.mark.gemma

LAYER = 6
HOOK = f"blocks.{LAYER}.hook_resid_post"
MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def acts(gemma):
    pairs = steerlens.data.load("sentiment")[:40]
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    return steerlens.capture(gemma, texts, "resid_post", layers=[LAYER], pool="mean",
                             labels=[1] * len(pairs) + [0] * len(pairs), batch_size=40, progress=False)


@pytest.fixture(scope="module")
def vector(acts):
    return steer.mean_diff(acts, layers=[LAYER])


@pytest.fixture(scope="module")
def server(gemma, vector, acts):
    from probes import LogisticProbe

    probe = LogisticProbe().fit(acts.at(LAYER), acts.labels)
    probe.meta_ = {"hook": HOOK, "layer": LAYER}
    app, engine = build(gemma, model_id=MODEL, max_batch=16)
    app.state.registry.add_vector("positive", vector)
    app.state.registry.add_vector("negative", -vector)
    app.state.registry.add_probe("sentiment", (HOOK, probe))
    with Server(app, engine) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def complete(client, prompt, **kw):
    extra = {k: kw.pop(k) for k in ("steering", "monitors") if k in kw}
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra or None, **kw)


def test_steered_differs_and_equals_in_process(gemma, vector, client):
    prompt = "I went to the store and"
    plain = complete(client, prompt, max_tokens=16, temperature=0).choices[0].text
    got = complete(client, prompt, max_tokens=16, temperature=0,
                   steering=[{"vector": "positive", "coeff": 6.0, "layers": [LAYER]}]).choices[0].text
    assert got != plain
    assert got == steer.generate(gemma, prompt, vector, coeff=6.0, layers=[LAYER], max_new_tokens=16)
    assert plain == steer.generate(gemma, prompt, max_new_tokens=16)
    sampled = complete(client, prompt, max_tokens=16, temperature=0.8, seed=11,
                       steering=[{"vector": "positive", "coeff": 6.0}]).choices[0].text
    assert sampled == steer.generate(gemma, prompt, vector, coeff=6.0, max_new_tokens=16, do_sample=True,
                                     temperature=0.8, seed=11)


def _requests(n: int) -> list[dict]:
    rng = random.Random(3)
    out = []
    for i in range(n):
        kw: dict = {"prompt": NEUTRAL_OPENINGS[i % len(NEUTRAL_OPENINGS)], "max_tokens": rng.randint(6, 14)}
        kw.update({"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "seed": 50 + i})
        if i % 4 == 1:
            kw["steering"] = [{"vector": "positive", "coeff": rng.choice([3.0, 6.0]), "positions": "all"}]
        elif i % 4 == 2:
            kw["steering"] = [{"vector": "negative", "coeff": 5.0, "positions": rng.choice(["prompt", "generated"])}]
        elif i % 4 == 3 and i % 8 == 3:
            kw["steering"] = [{"vector": "positive", "op": "ablate"}]
        if i % 3 == 0:
            kw["monitors"] = ["sentiment"]
        out.append(kw)
    return out


def _key(r):
    ch = r.choices[0]
    return ch.text, r.usage.completion_tokens, (ch.model_extra or {}).get("monitors")


def test_isolation_under_load_on_gemma(server, client):
    reqs = _requests(16)
    alone = [_key(complete(client, **dict(r))) for r in reqs]
    joined0 = server.engine.stats["joined"]
    got: list = [None] * len(reqs)
    errors: list = []

    def go(i):
        try:
            time.sleep(0.15 * i)  # a decode step is ~0.1-0.3 s: later requests join running batches
            got[i] = _key(complete(client, **dict(reqs[i])))
        except Exception as e:  # pragma: no cover - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors
    for i, (a, b) in enumerate(zip(got, alone)):
        assert a[:2] == b[:2], (i, reqs[i], a, b)
        if b[2] is not None:
            assert np.allclose(a[2]["sentiment"], b[2]["sentiment"], atol=1e-3), (i, a[2], b[2])
    assert server.engine.stats["joined"] > joined0


def test_streaming_equals_non_streaming_on_gemma(client):
    kw = dict(max_tokens=12, temperature=0, steering=[{"vector": "positive", "coeff": 4.0}], monitors=["sentiment"])
    full = complete(client, "The meeting this morning", **dict(kw))
    chunks = list(complete(client, "The meeting this morning", stream=True, **dict(kw)))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    scores = [s for c in chunks for s in c.choices[0].model_extra["monitors"]["sentiment"]]
    assert np.allclose(scores, full.choices[0].model_extra["monitors"]["sentiment"], atol=1e-6)
    assert len(scores) >= 1 and all(0 <= s <= 1 for s in scores)
