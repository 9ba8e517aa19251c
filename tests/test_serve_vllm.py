"""The vLLM engine (``steerlens serve --engine vllm``) on the embedded Gemma 3 270M, float32, CPU:
the same OpenAI routes and steering spec as the in-process engine, the same greedy tokens,
steered and unsteered, and 16 concurrent mixed requests equal their solo runs.

vLLM lives in its own environment (``tools/install-vllm.sh``: about 16 minutes, 3.5 GB); this
module runs where ``vllm`` imports (``.ci/run`` runs it in that environment) and is skipped
elsewhere, saying why.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is installed in its own environment: tools/install-vllm.sh")

import openai  # noqa: E402

import steer  # noqa: E402
import steerlens  # noqa: E402
from steer.evaluate import NEUTRAL_OPENINGS  # noqa: E402
from steer.serve import Server, build  # noqa: E402

pytestmark = pytest.mark.gemma

LAYER = 6
MODEL = "gemma-3-270m"


@pytest.fixture(scope="module")
def vector(gemma):
    pairs = steerlens.data.load("sentiment")[:40]
    acts = steerlens.capture(gemma, [p.positive for p in pairs] + [p.negative for p in pairs], "resid_post",
                             layers=[LAYER], pool="mean", labels=[1] * 40 + [0] * 40, batch_size=40, progress=False)
    return steer.mean_diff(acts, layers=[LAYER])


@pytest.fixture(scope="module")
def every(gemma):
    """The default recipe's shape: the mean difference at every layer (of 40 pairs here)."""
    pairs = steerlens.data.load("sentiment")[:40]
    acts = steerlens.capture(gemma, [p.positive for p in pairs] + [p.negative for p in pairs], "resid_post",
                             pool="mean", labels=[1] * 40 + [0] * 40, batch_size=40, progress=False)
    return steer.mean_diff(acts)


def app_with_vectors(gemma, vector, *, inprocess: bool = False, every=None, **vllm_options):
    """An app and engine with the "positive" and "negative" vectors registered (and "every", a
    vector at every layer, when given): the vLLM engine (float32, 512 tokens, plus
    ``vllm_options``), or the in-process one."""
    from steerlens.models import resolve_checkpoint

    if inprocess:
        app, eng = build(gemma, model_id=MODEL)
    else:
        app, eng = build(gemma, model_id=MODEL, engine="vllm", checkpoint=resolve_checkpoint(MODEL),
                         vllm_options={"dtype": "float32", "max_model_len": 512, **vllm_options})
    app.state.registry.add_vector("positive", vector)
    app.state.registry.add_vector("negative", -vector)
    if every is not None:
        app.state.registry.add_vector("every", every)
    return app, eng


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def servers(gemma, vector, every):
    with Server(*app_with_vectors(gemma, vector, every=every)) as sv, \
            Server(*app_with_vectors(gemma, vector, inprocess=True, every=every)) as si:
        yield {"vllm": client(sv), "inprocess": client(si)}


def complete(client, prompt, **kw):
    extra = {k: kw.pop(k) for k in ("steering", "monitors") if k in kw}
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra or None, **kw)


CASES = [
    {},
    {"steering": [{"vector": "positive", "coeff": 6.0}]},
    {"steering": [{"vector": "negative", "coeff": 4.0, "positions": "generated"}]},
    {"steering": [{"vector": "positive", "coeff": 4.0, "positions": "prompt"}]},
    {"steering": [{"vector": "positive", "op": "ablate"}]},
    {"steering": [{"vector": "every", "coeff": 0.25}]},  # the default recipe's shape: all 18 layers
    {"steering": [{"vector": "every", "coeff": 0.2, "positions": "generated"}, {"vector": "negative", "coeff": 3.0}]},
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_vllm_equals_in_process_engine(servers, case):
    prompt = NEUTRAL_OPENINGS[case]
    kw = dict(max_tokens=16, temperature=0, **CASES[case])
    a = complete(servers["vllm"], prompt, **dict(kw)).choices[0].text
    b = complete(servers["inprocess"], prompt, **dict(kw)).choices[0].text
    assert a == b


def test_steering_changes_vllm_output(servers):
    plain = complete(servers["vllm"], "I went to the store and", max_tokens=16, temperature=0).choices[0].text
    steered = complete(servers["vllm"], "I went to the store and", max_tokens=16, temperature=0,
                       steering=[{"vector": "positive", "coeff": 8.0}]).choices[0].text
    assert plain != steered


def test_vllm_concurrent_mixed_requests_equal_solo(servers):
    rng = random.Random(5)
    reqs = []
    for i in range(16):
        kw = {"max_tokens": rng.randint(6, 14), "temperature": 0}
        if i % 3 == 1:
            kw["steering"] = [{"vector": "positive", "coeff": rng.choice([3.0, 6.0])}]
        elif i % 3 == 2:
            kw["steering"] = [{"vector": "negative", "coeff": 5.0, "positions": rng.choice(["prompt", "generated"])}]
        reqs.append({"prompt": NEUTRAL_OPENINGS[i % len(NEUTRAL_OPENINGS)], **kw})
    c = servers["vllm"]
    solo = [complete(c, **dict(r)).choices[0].text for r in reqs]
    got: list = [None] * 16

    def go(i):
        time.sleep(0.1 * i)
        got[i] = complete(c, **dict(reqs[i])).choices[0].text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert got == solo


@contextlib.contextmanager
def started(server: Server, **env: str):
    """``server`` started with ``env`` set (vLLM reads it when it starts its workers, and only
    then), the environment restored at once, the server stopped at the end."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server.__enter__()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tp_client(gemma, vector, every):
    """The vLLM engine with the model sharded over two workers (tensor parallel). On the CPU
    each worker needs its own core group: vLLM splits the cores when told to simulate NUMA nodes."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("tensor parallel needs two GPUs here (or the CPU)")
    app, eng = app_with_vectors(gemma, vector, every=every, tensor_parallel_size=2)
    with started(Server(app, eng), VLLM_CPU_SIM_MULTI_NUMA="1") as sv:
        assert eng.workers == 2  # both ranks run steerlens' hooks
        yield client(sv)


def test_vllm_tensor_parallel_equals_in_process_engine(servers, tp_client):
    """Sharded over two workers, every worker's hooks see the whole hidden state after the layer's
    all-reduce and steer it alike: the same greedy tokens as the in-process engine, every case."""
    for case in range(len(CASES)):
        kw = dict(max_tokens=16, temperature=0, **CASES[case])
        a = complete(tp_client, NEUTRAL_OPENINGS[case], **dict(kw)).choices[0].text
        b = complete(servers["inprocess"], NEUTRAL_OPENINGS[case], **dict(kw)).choices[0].text
        assert a == b, (case, a, b)


@pytest.fixture(scope="module")
def two_node_client(gemma, vector, every, tmp_path_factory):
    """Two nodes on loopback: node 1 is ``python -m steer.serve.vllm_node`` (vLLM's headless
    workers with steerlens' extension), node 0 the vLLM engine, tensor parallel over both (vLLM's
    multiprocess executor over TCP, as across machines). On the CPU each node gets its own core."""
    import subprocess
    import sys

    import torch

    from steerlens.models import resolve_checkpoint

    cores = sorted(os.sched_getaffinity(0))
    if torch.cuda.is_available() or len(cores) < 2:
        pytest.skip("two nodes on one machine are simulated on two CPU cores")
    ckpt = str(resolve_checkpoint(MODEL))
    log = tmp_path_factory.mktemp("node1") / "node1.log"
    node1 = subprocess.Popen(
        [sys.executable, "-m", "steer.serve.vllm_node", "--model", ckpt, "--nnodes", "2", "--node-rank", "1",
         "--master-addr", "127.0.0.1", "--tensor-parallel-size", "2", "--dtype", "float32", "--max-model-len", "512",
         "--kv-cache-memory-bytes", str(1 << 30)],
        env=dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(cores[1])), stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        app, eng = app_with_vectors(gemma, vector, every=every, tensor_parallel_size=2, nnodes=2, node_rank=0,
                                    master_addr="127.0.0.1")
        with started(Server(app, eng), VLLM_CPU_OMP_THREADS_BIND=str(cores[0])) as sv:
            assert eng.workers == 2, log.read_text()[-3000:]  # the remote node's worker runs the hooks too
            yield client(sv)
    finally:
        node1.terminate()
        try:
            node1.wait(60)
        except subprocess.TimeoutExpired:
            node1.kill()
            node1.wait(30)


def test_vllm_over_two_nodes_equals_in_process_engine(servers, two_node_client):
    """Sharded over two nodes (loopback), the same greedy tokens as the in-process engine, every case."""
    for case in range(len(CASES)):
        kw = dict(max_tokens=16, temperature=0, **CASES[case])
        a = complete(two_node_client, NEUTRAL_OPENINGS[case], **dict(kw)).choices[0].text
        b = complete(servers["inprocess"], NEUTRAL_OPENINGS[case], **dict(kw)).choices[0].text
        assert a == b, (case, a, b)


def test_vllm_refuses_monitors_with_a_400(servers):
    with pytest.raises(openai.BadRequestError) as e:
        complete(servers["vllm"], "x", max_tokens=2, monitors=["anything"])
    assert "monitors" in str(e.value)
