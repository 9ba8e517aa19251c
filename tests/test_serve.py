"""The OpenAI-compatible server on the tiny model, driven by the real ``openai`` client and httpx
against a server on 127.0.0.1: steered output equals in-process steering, isolation under load
with rows joining running batches, streaming equals non-streaming, every bad input is a 4xx,
the API key, management routes, limits, metrics."""

from __future__ import annotations

import base64
import random
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import torch

import steer
from probes import LogisticProbe, save_probe
from steer.serve import Limits, Server, build
from steer.serve.engine import Job, Sampling
from steer.vector import SteeringVector
from steerlens import tiny_model

MODEL = "tiny"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def vectors(model):
    from steerlens.models import fingerprint, model_name

    g = torch.Generator().manual_seed(0)
    mk = lambda layer: SteeringVector({layer: torch.randn(64, generator=g)}, model_name=model_name(model),  # noqa: E731
                                      fingerprint=fingerprint(model))
    return {"pos": mk(1), "neg": mk(1), "early": mk(0)}


@pytest.fixture(scope="module")
def probe(model):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 64)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    p = LogisticProbe().fit(X, y)
    p.meta_ = {"hook": HOOK, "layer": 1}
    return p


@pytest.fixture(scope="module")
def server(model, vectors, probe):
    app, engine = build(model, model_id=MODEL, max_batch=8, max_queue=128)
    for name, v in vectors.items():
        app.state.registry.add_vector(name, v)
    app.state.registry.add_probe("feature0", (HOOK, probe))
    with Server(app, engine) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def complete(client, prompt, **kw):
    extra = {k: kw.pop(k) for k in ("steering", "monitors") if k in kw}
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra or None, **kw)


# -- equality with in-process steering ------------------------------------------------------------
def test_steered_completion_differs_and_equals_in_process(model, vectors, client):
    prompt = "The cat sat on the"
    plain = complete(client, prompt, max_tokens=10, temperature=0)
    steered = complete(client, prompt, max_tokens=10, temperature=0,
                       steering=[{"vector": "pos", "coeff": 8.0, "layers": [1]}])
    assert steered.choices[0].text != plain.choices[0].text
    want = steer.generate(model, prompt, vectors["pos"], coeff=8.0, layers=[1], max_new_tokens=10, stop_at_eos=True)
    assert steered.choices[0].text == want
    assert plain.choices[0].text == steer.generate(model, prompt, max_new_tokens=10)
    assert steered.usage.completion_tokens == 10 and steered.usage.prompt_tokens == len(prompt) + 1


def test_sampled_with_seed_equals_in_process(model, vectors, client):
    prompt = "Once upon a time"
    got = complete(client, prompt, max_tokens=12, temperature=0.9, top_p=0.95, seed=1234,
                   steering=[{"vector": "neg", "coeff": 3.0, "positions": "generated"}])
    want = steer.generate(model, prompt, vectors["neg"], coeff=3.0, positions="generated", max_new_tokens=12,
                          do_sample=True, temperature=0.9, top_p=0.95, seed=1234)
    assert got.choices[0].text == want
    again = complete(client, prompt, max_tokens=12, temperature=0.9, top_p=0.95, seed=1234,
                     steering=[{"vector": "neg", "coeff": 3.0, "positions": "generated"}])
    assert again.choices[0].text == want
    other = complete(client, prompt, max_tokens=12, temperature=0.9, top_p=0.95, seed=4321,
                     steering=[{"vector": "neg", "coeff": 3.0, "positions": "generated"}])
    assert other.choices[0].text != want


def test_several_entries_combine_like_nested_steering(model, vectors, client):
    prompt = "Hello there"
    got = complete(client, prompt, max_tokens=8, temperature=0,
                   steering=[{"vector": "pos", "coeff": 4.0}, {"vector": "early", "coeff": -3.0, "positions": "prompt"}])
    with steer.apply(model, vectors["pos"], coeff=4.0), steer.apply(model, vectors["early"], coeff=-3.0, positions="prompt"):
        want = steer.generate(model, prompt, max_new_tokens=8)
    assert got.choices[0].text == want


def test_inline_vector_equals_registered(client, vectors):
    v = vectors["pos"][1].tolist()
    a = complete(client, "abc", max_tokens=6, temperature=0, steering=[{"vector": {"layers": {"1": v}}, "coeff": 5.0}])
    b64 = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
    b = complete(client, "abc", max_tokens=6, temperature=0, steering=[{"vector": {"layers": {"1": b64}}, "coeff": 5.0}])
    c = complete(client, "abc", max_tokens=6, temperature=0, steering=[{"vector": "pos", "coeff": 5.0}])
    assert a.choices[0].text == b.choices[0].text == c.choices[0].text


# -- isolation under load -------------------------------------------------------------------------------
def _mixed_requests(n: int) -> list[dict]:
    rng = random.Random(7)
    prompts = ["Hi", "The quick brown fox", "x" * 30, "Numbers: 1 2 3", "A", "Tell me a story about a dragon"]
    out = []
    for i in range(n):
        kw: dict = {"max_tokens": rng.randint(3, 14)}
        if i % 2:
            kw.update(temperature=rng.choice([0.7, 1.0]), seed=1000 + i, top_p=rng.choice([1.0, 0.9]))
        else:
            kw["temperature"] = 0
        kind = i % 5
        if kind == 1:
            kw["steering"] = [{"vector": "pos", "coeff": rng.choice([2.0, 6.0]), "positions": "all"}]
        elif kind == 2:
            kw["steering"] = [{"vector": "neg", "coeff": rng.choice([-4.0, 3.0]), "positions": "generated"}]
        elif kind == 3:
            kw["steering"] = [{"vector": "early", "coeff": 5.0, "positions": "prompt"},
                              {"vector": "pos", "op": "ablate"}]
        if i % 3 == 0:
            kw["monitors"] = ["feature0"]
        out.append({"prompt": rng.choice(prompts), **kw})
    return out


def _key(r) -> tuple:
    ch = r.choices[0]
    mon = (ch.model_extra or {}).get("monitors")
    return ch.text, ch.finish_reason, r.usage.completion_tokens, mon


def _same(a: tuple, b: tuple) -> bool:
    if a[:3] != b[:3]:
        return False
    if a[3] is None or b[3] is None:
        return a[3] == b[3]
    return all(np.allclose(a[3][k], b[3][k], atol=1e-4) for k in a[3])


def test_isolation_under_load_rows_join_running_batches(server, client):
    reqs = _mixed_requests(64)
    alone = [_key(complete(client, **dict(r))) for r in reqs]  # one at a time
    stats0 = dict(server.engine.stats)
    got: list = [None] * len(reqs)
    errors: list = []

    def go(i):
        try:
            time.sleep(0.004 * i)  # staggered: later requests arrive while earlier ones decode
            got[i] = _key(complete(client, **dict(reqs[i])))
        except Exception as e:  # pragma: no cover - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    mismatched = [i for i in range(len(reqs)) if not _same(got[i], alone[i])]
    assert not mismatched, [(i, reqs[i], got[i], alone[i]) for i in mismatched[:3]]
    stats = server.engine.stats
    assert stats["joined"] - stats0["joined"] > 0, "no request joined a running batch"
    assert stats["max_rows"] > 1


def test_engine_rows_join_mid_decode(model, vectors):
    """Engine level: a request submitted while another decodes joins its batch, and both get
    what they get alone."""
    from steer.serve.engine import Engine, SteerEntry, Token

    e = Engine(model, max_batch=4).start()
    try:
        long = dict(prompt_ids=[1, 2, 3, 4, 5], sampling=Sampling(max_tokens=40, temperature=0))
        short = dict(prompt_ids=[9, 8, 7], sampling=Sampling(max_tokens=5, temperature=0.8, seed=3),
                     steering=(SteerEntry(vectors["pos"], 4.0, (1,)),))
        alone_long = [x.id for x in e.run(long) if isinstance(x, Token)]
        alone_short = [x.id for x in e.run(short) if isinstance(x, Token)]
        got: dict = {}
        started = threading.Event()

        def emit_long(ev, out=[]):  # noqa: B006
            out.append(ev)
            if len(out) == 3:
                started.set()
            got["long"] = out

        e.submit(Job(emit=emit_long, **long))
        assert started.wait(60)
        joined0 = e.stats["joined"]
        ev = e.run(short)
        assert e.stats["joined"] == joined0 + 1
        assert [x.id for x in ev if isinstance(x, Token)] == alone_short
        deadline = time.monotonic() + 60
        while e.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [x.id for x in got["long"] if isinstance(x, Token)] == alone_long
    finally:
        e.stop()


# -- streaming ---------------------------------------------------------------------------------------
def test_streaming_equals_non_streaming_with_monitor_scores(client):
    kw = dict(max_tokens=12, temperature=0.8, seed=5, steering=[{"vector": "pos", "coeff": 3.0}],
              monitors=["feature0"])
    full = complete(client, "Streaming test", **dict(kw))
    chunks = list(complete(client, "Streaming test", stream=True, stream_options={"include_usage": True}, **dict(kw)))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    scores = [s for c in chunks if c.choices for s in c.choices[0].model_extra["monitors"]["feature0"]]
    assert text == full.choices[0].text
    want = full.choices[0].model_extra["monitors"]["feature0"]
    assert len(want) == full.usage.completion_tokens - (full.choices[0].finish_reason == "stop")
    assert np.allclose(scores, want, atol=1e-6) and all(0 <= s <= 1 for s in want)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_monitor_scores_equal_the_probe_on_captured_activations(model, probe, client):
    """The score of generated token t is the probe at the position that produced it."""
    prompt = "Monitor me"
    r = complete(client, prompt, max_tokens=5, temperature=0, monitors=["feature0"])
    ids = model.tokenizer(prompt)["input_ids"]
    new = steer.generate(model, prompt, max_new_tokens=5, return_tokens=True)
    _, cache = model.run_with_cache(torch.tensor([ids + new[:-1]]), names_filter=[HOOK])
    x = cache[HOOK][0, -5:].numpy()
    want = probe.predict_proba(x)[:, 1]
    assert np.allclose(r.choices[0].model_extra["monitors"]["feature0"], want, atol=1e-4)


def test_stop_strings_cut_the_text_stream_and_not(model, client):
    base = complete(client, "Counting:", max_tokens=12, temperature=0).choices[0].text
    assert len(base) > 4
    stop = base[3:5]
    r = complete(client, "Counting:", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == base[: base.index(stop)] and r.choices[0].finish_reason == "stop"
    s = "".join(c.choices[0].text for c in complete(client, "Counting:", max_tokens=12, temperature=0, stop=[stop],
                                                    stream=True))
    assert s == r.choices[0].text


def test_logprobs(client):
    r = complete(client, "Log", max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 4 and all(x <= 0 for x in lp.token_logprobs)
    assert all(len(t) == 3 and max(t.values()) == pytest.approx(c) for t, c in zip(lp.top_logprobs, lp.token_logprobs))


# -- chat ---------------------------------------------------------------------------------------------
def test_chat_without_template_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 400 and "no chat template" in str(e.value)


def test_chat_with_a_template(vectors, probe):
    m = tiny_model()  # its own copy: the template is set on its tokenizer
    m.tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                                 "{% if add_generation_prompt %}<assistant>{% endif %}")
    app, engine = build(m, model_id=MODEL)
    app.state.registry.add_vector("pos", vectors["pos"])
    with Server(app, engine) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "Say something"}]
        r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0,
                                      extra_body={"steering": [{"vector": "pos", "coeff": 2.0}]})
        prompt = m.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert r.choices[0].message.content == steer.generate(m, prompt, vectors["pos"], coeff=2.0, max_new_tokens=6)
        stream = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=6, temperature=0, stream=True,
                                           extra_body={"steering": [{"vector": "pos", "coeff": 2.0}]})
        assert "".join(ch.choices[0].delta.content or "" for ch in stream) == r.choices[0].message.content


# -- bad input: 4xx, never 500, and the server still answers ------------------------------------------
BAD = [
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "nope"}]}, 400, "steering[0].vector"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "pos", "coeff": 1e300}]}, 400, "steering[0]"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "pos", "layers": [99]}]}, 400, "steering[0]"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "pos", "op": "zap"}]}, 400, "steering[0].op"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "pos", "positions": "middle"}]}, 400, "steering[0].positions"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "pos", "op": "clamp"}]}, 400, "steering[0]"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": {"layers": {"1": [0.0] * 10}}}]}, 400,
     "steering[0].vector.layers"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": {"layers": {"1": [1.0] * 64 * 3}}}]}, 413,
     "steering[0].vector.layers"),
    ({"model": MODEL, "prompt": "x", "steering": "pos"}, 400, "steering"),
    ({"model": MODEL, "prompt": "x", "monitors": ["nope"]}, 400, "monitors[0]"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x" * 250, "max_tokens": 10}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n"),
    ({"model": MODEL, "prompt": "x", "seed": -5}, 400, "seed"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": [1, 2, 999999]}, 400, "prompt"),
    ({"model": MODEL, "prompt": 5}, 400, "prompt"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": "other", "prompt": "x"}, 404, "model"),
    ({"model": MODEL, "prompt": "x", "stop": [""]}, 400, "stop"),
]


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def test_every_bad_input_is_a_4xx_and_the_server_still_answers(server, client):
    good = complete(client, "still fine", max_tokens=5, temperature=0).choices[0].text
    url = server.url + "/v1/completions"
    for body, status, param in BAD:
        r = httpx.post(url, json=body, timeout=60)
        assert r.status_code == status, (body, r.status_code, r.text)
        assert _error(r)["param"] == param, (body, r.text)
        assert complete(client, "still fine", max_tokens=5, temperature=0).choices[0].text == good
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b'{"model": "tiny", "prompt": "x", "temperature": NaN}'):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 400, (raw, r.text)
        _error(r)
    r = httpx.post(url, content=b'{"model": "tiny", "prompt": "x", "steering": [{"vector": "pos", "coeff": NaN}]}',
                   timeout=60)
    assert r.status_code == 400 and "coeff" in _error(r)["param"]
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and _error(r)["type"] == "not_found_error"
    r = httpx.get(url)
    assert r.status_code == 405
    _error(r)
    assert complete(client, "still fine", max_tokens=5, temperature=0).choices[0].text == good


def test_overflowing_steering_fails_only_its_own_row(model):
    """Steering that makes one request's activations non-finite is that request's 400; the rows
    decoding beside it are unaffected."""
    from steerlens.models import fingerprint, model_name

    half = tiny_model(dtype=torch.float16)  # float16 overflows (65504) within the accepted coefficients
    huge = SteeringVector({1: torch.full((64,), 1e5)}, model_name=model_name(half), fingerprint=fingerprint(half))
    app, engine = build(half, model_id=MODEL)
    app.state.registry.add_vector("huge", huge)
    with Server(app, engine) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        alone = complete(c, "beside", max_tokens=20, temperature=0).choices[0].text
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(r=complete(c, "beside", max_tokens=20, temperature=0)))
        t.start()
        with pytest.raises(openai.BadRequestError) as e:
            complete(c, "boom", max_tokens=5, temperature=0, steering=[{"vector": "huge", "coeff": 10.0}])
        t.join(60)
        assert "non-finite" in str(e.value)
        assert out["r"].choices[0].text == alone


# -- API key, body size, queue, timeout, disconnect -----------------------------------------------------
def test_api_key_is_enforced_on_every_route(model, vectors):
    app, engine = build(model, model_id=MODEL, api_key="sekret")
    with Server(app, engine) as s:
        routes = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/v1/completions"),
                  ("POST", "/v1/chat/completions"), ("GET", "/v1/steering/vectors"), ("POST", "/v1/steering/vectors"),
                  ("DELETE", "/v1/steering/vectors/pos"), ("GET", "/v1/probes"), ("POST", "/v1/probes"),
                  ("DELETE", "/v1/probes/x")]
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
                r = httpx.request(method, s.url + path, headers=headers, json={})
                assert r.status_code == 401, (method, path, headers, r.text)
                assert _error(r)["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0)
        add = httpx.post(s.url + "/v1/steering/vectors", headers={"Authorization": "Bearer sekret"},
                         json={"name": "v", "layers": {"1": vectors["pos"][1].tolist()}})
        assert add.status_code == 201
        assert complete(ok, "key", max_tokens=3, temperature=0, steering=[{"vector": "v"}]).choices[0].text
        with pytest.raises(openai.AuthenticationError):
            complete(openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0), "key", max_tokens=3)


def test_oversized_body_is_413(model):
    app, engine = build(model, model_id=MODEL, limits=Limits(max_body=2000))
    with Server(app, engine) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
        assert r.status_code == 413 and _error(r)["code"] == "body_too_large"

        def chunks():  # no content-length: counted while reading
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        r = httpx.post(s.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 2}).status_code == 200


def _blocked_engine(engine):
    """Occupy the engine thread: a job whose event callback waits for ``release``."""
    release, entered = threading.Event(), threading.Event()

    def emit(ev):
        entered.set()
        release.wait(60)

    engine.submit(Job(prompt_ids=[1, 2], sampling=Sampling(max_tokens=1, temperature=0), emit=emit))
    assert entered.wait(60)
    return release


def test_full_queue_is_429_with_retry_after(model):
    app, engine = build(model, model_id=MODEL, max_batch=1, max_queue=2)
    with Server(app, engine) as s:
        release = _blocked_engine(engine)
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(httpx.post(
            s.url + "/v1/completions", json={"model": MODEL, "prompt": "q", "max_tokens": 2}, timeout=60)))
            for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while engine.queue_length < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "q", "max_tokens": 2})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and _error(r)["code"] == "queue_full"
        release.set()
        for t in threads:
            t.join(60)
        assert [x.status_code for x in results] == [200, 200]


def test_request_timeout_is_408(model):
    app, engine = build(model, model_id=MODEL)
    with Server(app, engine) as s:
        release = _blocked_engine(engine)
        try:
            r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "t", "max_tokens": 5,
                                                            "timeout": 0.2}, timeout=60)
        finally:
            release.set()
        assert r.status_code == 408 and _error(r)["type"] == "timeout_error"


def test_client_disconnect_mid_stream_frees_its_row(model):
    app, engine = build(model, model_id=MODEL)
    with Server(app, engine) as s:
        with httpx.stream("POST", s.url + "/v1/completions", json={"model": MODEL, "prompt": "go", "max_tokens": 200,
                                                                    "stream": True, "temperature": 0}) as r:
            lines = r.iter_lines()
            first = [next(lines) for _ in range(2)]
            assert first[0].startswith("data: ")
        deadline = time.monotonic() + 60
        while (engine.running or engine.stats["cancelled"] == 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.stats["cancelled"] == 1 and engine.running == 0
        assert httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 2}).status_code == 200


def test_client_disconnect_while_waiting_cancels_a_non_streamed_request(model):
    """A non-streamed request whose client goes away is cancelled (no row is spent on it)."""
    app, engine = build(model, model_id=MODEL)
    jobs: list[Job] = []
    with Server(app, engine) as s:
        release = _blocked_engine(engine)
        submit = engine.submit
        engine.submit = lambda job: (jobs.append(job), submit(job))[1]
        try:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
                httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "w", "max_tokens": 50},
                           timeout=httpx.Timeout(60, read=0.5))
            deadline = time.monotonic() + 30
            while not (jobs and jobs[-1].cancelled.is_set()) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(jobs) == 1 and jobs[0].cancelled.is_set()
        finally:
            release.set()
        assert httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 2}).status_code == 200


# -- management -------------------------------------------------------------------------------------------
def test_vector_and_probe_management(model, vectors, probe, tmp_path):
    other = tiny_model(seed=1)  # same width, other weights
    app, engine = build(model, model_id=MODEL)
    with Server(app, engine) as s:
        url = s.url + "/v1/steering/vectors"
        assert httpx.get(url).json()["data"] == []
        path = vectors["pos"].with_coeff(2.5).save(tmp_path / "pos.safetensors")
        up = httpx.post(url, json={"name": "pos", "file": base64.b64encode(path.read_bytes()).decode()})
        assert up.status_code == 201, up.text
        info = up.json()
        assert info["id"] == "pos" and info["layers"] == [1] and info["width"] == 64 and info["coeff"] == 2.5
        assert httpx.post(url, json={"name": "pos", "layers": {"1": [0.5] * 64}}).status_code == 409
        assert httpx.post(url, json={"name": "pos", "layers": {"1": [0.5] * 64}, "replace": True}).status_code == 201
        assert [v["id"] for v in httpx.get(url).json()["data"]] == ["pos"]
        from steerlens.models import fingerprint

        foreign = SteeringVector({1: torch.ones(64)}, fingerprint=fingerprint(other)).save(tmp_path / "f.safetensors")
        r = httpx.post(url, json={"name": "foreign", "file": base64.b64encode(foreign.read_bytes()).decode()})
        assert r.status_code == 400 and "fingerprint" in _error(r)["message"]
        wide = SteeringVector({1: torch.ones(32)}).save(tmp_path / "w.safetensors")
        r = httpx.post(url, json={"name": "wide", "file": base64.b64encode(wide.read_bytes()).decode()})
        assert r.status_code == 400 and "32" in _error(r)["message"]
        for bad in ({"name": "bad name!", "layers": {"1": [0.0] * 64}}, {"name": "x", "file": "%%%"},
                    {"name": "x", "file": base64.b64encode(b"not a safetensors file").decode()}, {"name": "x"}):
            r = httpx.post(url, json=bad)
            assert r.status_code == 400, (bad, r.text)
            _error(r)
        assert httpx.delete(url + "/pos").json()["deleted"] is True
        assert httpx.delete(url + "/pos").status_code == 404
        # probes
        purl = s.url + "/v1/probes"
        ppath = save_probe(tmp_path / "p.safetensors", probe, model=model, hook=HOOK)
        r = httpx.post(purl, json={"name": "feature0", "file": base64.b64encode(ppath.read_bytes()).decode()})
        assert r.status_code == 201, r.text
        assert r.json()["hook"] == HOOK and r.json()["width"] == 64
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        got = complete(c, "probe", max_tokens=3, temperature=0, monitors=["feature0"])
        assert len(got.choices[0].model_extra["monitors"]["feature0"]) == 3
        fpath = save_probe(tmp_path / "q.safetensors", probe, model=other, hook=HOOK)
        r = httpx.post(purl, json={"name": "foreign", "file": base64.b64encode(fpath.read_bytes()).decode()})
        assert r.status_code == 400 and "fingerprint" in _error(r)["message"]
        assert httpx.delete(purl + "/feature0").status_code == 200
        assert httpx.get(purl).json()["data"] == []


def test_vectors_and_probes_load_from_directories(model, vectors, probe, tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "p").mkdir()
    vectors["pos"].save(tmp_path / "v" / "positive.safetensors")
    save_probe(tmp_path / "p" / "feature0.safetensors", probe, model=model, hook=HOOK)
    app, engine = build(model, model_id=MODEL, vectors=tmp_path / "v", probes=tmp_path / "p")
    assert sorted(app.state.registry.vectors) == ["positive"] and sorted(app.state.registry.probes) == ["feature0"]
    (tmp_path / "v" / "broken.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="broken"):
        build(model, model_id=MODEL, vectors=tmp_path / "v")


# -- health and metrics ------------------------------------------------------------------------------------
def test_health_and_metrics(server, client):
    complete(client, "metrics", max_tokens=3, temperature=0)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("steerlens_requests_total", "steerlens_completion_tokens_total", "steerlens_prompt_tokens_total",
                 "steerlens_queue_length", "steerlens_running_rows", "steerlens_batch_size_bucket",
                 "steerlens_request_latency_seconds_bucket", "steerlens_time_to_first_token_seconds_bucket"):
        assert name in text, name
    line = next(x for x in text.splitlines() if x.startswith('steerlens_requests_total{route="/v1/completions",status="200"}'))
    assert float(line.split()[-1]) >= 1


def test_steerlens_serve_command(model, vectors, tmp_path):
    """``steerlens serve`` in its own process: loads the vector directory, binds 127.0.0.1,
    enforces the key from the environment, answers an OpenAI client, stops on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from steerlens.models import cache_dir

    (tmp_path / "v").mkdir()
    vectors["pos"].save(tmp_path / "v" / "positive.safetensors")
    checkpoint = next(p for p in (cache_dir() / "tiny").iterdir() if p.name == model.cfg.model_name)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "STEERLENS_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "steerlens.app.cli", "serve", "--model", str(checkpoint),
                             "--model-id", MODEL, "--vectors", str(tmp_path / "v"), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/health", headers={"Authorization": "Bearer k3y"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/health").status_code == 401
        c = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        r = complete(c, "cli", max_tokens=5, temperature=0, steering=[{"vector": "positive", "coeff": 3.0}])
        assert r.choices[0].text == steer.generate(model, "cli", vectors["pos"], coeff=3.0, max_new_tokens=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_serve_command_rejects_bad_options():
    from typer.testing import CliRunner

    from steerlens.app.cli import app

    for args, what in ((["--port", "70000"], "--port"), (["--max-batch", "0"], "--max-batch"),
                       (["--mode", "turbo"], "--mode"), (["--timeout", "0"], "--timeout"),
                       (["--nnodes", "0", "--engine", "vllm"], "--nnodes must be >= 1"),
                       (["--nnodes", "2"], "--nnodes and --master-addr need --engine vllm"),
                       (["--engine", "vllm", "--nnodes", "2", "--tensor-parallel-size", "3"],
                        "--nnodes 2 must divide --tensor-parallel-size 3")):
        r = CliRunner().invoke(app, ["serve", *args])
        assert r.exit_code == 2 and what in r.output, (args, r.output)


def test_a_failing_receiver_does_not_stop_the_engine(model):
    """An ``emit`` that raises (a client's event loop already closed) cancels that job only."""
    from steer.serve.engine import Engine, Finish

    e = Engine(model).start()
    try:
        def broken(ev):
            raise RuntimeError("Event loop is closed")

        e.submit(Job(prompt_ids=[1, 2, 3], sampling=Sampling(max_tokens=8, temperature=0), emit=broken))
        ev = e.run(dict(prompt_ids=[4, 5], sampling=Sampling(max_tokens=3, temperature=0)), timeout=120)
        assert isinstance(ev[-1], Finish)
    finally:
        e.stop()


@pytest.mark.parametrize("cores, preset, expected", [(2, None, "0"), (4, None, "0"), (2, "1", "1"), (16, None, None)])
def test_vllm_engine_gives_the_cpu_worker_every_core_on_small_machines(monkeypatch, cores, preset, expected):
    """vLLM's CPU worker keeps one core for its front end unless told otherwise; on ≤ 4 cores the
    engine tells it not to, and never overrides a value the user set (no vLLM needed)."""
    import os

    from steer.serve import vllm_engine

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if preset is None:
        monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", preset)
    vllm_engine._cpu_cores_for_vllm()
    assert os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == expected
