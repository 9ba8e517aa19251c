"""Property-based tests (hypothesis) over the input space of ``steerlens.capture``, ``steer.apply``
around a forward pass, ``steer.generate``, ``SteeringVector.load`` and ``Activations.load``.

For every drawn example the call either returns a correct result or raises ``ValueError`` /
``TypeError`` (``FileNotFoundError`` for a missing file); it never raises anything else, never
returns NaN/inf logits or activations, and never leaves a hook on the model. Where correctness is
cheap to check it is checked against an independent reference: plain transformer-lens hooks,
one-prompt-at-a-time runs, the saved object.

Examples are drawn as plain recipes (tuples, dicts, numbers) and built inside the test, so a
falsifying example prints readably. ``derandomize=True``: CI sees the same examples every run.
The ``@example``s are the smallest failures found so far, tried before the drawn examples
(hypothesis stops at the first failing phase, so while one of them fails the drawn ones wait).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

import steer
import steerlens
from steer.vector import SteeringVector
from steerlens.activations import Activations, ShardWriter
from steerlens.hooks import hook_kind
from steerlens.tokens import tokenize

N_LAYERS, D_MODEL = 3, 64
PROMPTS = ["hello there, my friend", "hi", "the cat sat on the", "a b"]
USER_ERRORS = (ValueError, TypeError)


def props(n: int = 50):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": 10 s per failure
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Hundreds of tiny forward passes: on a shared 2-core machine one thread is 5-50x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def model():
    """Our own tiny model (not the session fixture), so no other test's hooks can be blamed on us."""
    m = steerlens.tiny_model(n_layers=N_LAYERS, d_model=D_MODEL, seed=0)
    m("warm up")  # transformer-lens wires its internal hooks on the first forward
    assert no_hooks_left(m)
    return m


def no_hooks_left(m) -> bool:
    return (all(len(hp._forward_hooks) == 0 for hp in set(m.hook_dict.values()))
            and len(m.original_model._forward_pre_hooks) == 0)


def attempt(fn, allowed=USER_ERRORS):
    """``(result, None)`` or ``(None, error)`` for an allowed error; any other exception propagates."""
    try:
        got = fn()
    except allowed as e:
        note(f"raised {type(e).__name__}: {e}")
        event(f"raised {type(e).__name__}")
        return None, e
    event("returned")
    return got, None


# -- recipes: tensors, vectors, coefficients, layers, positions --------------------------------------

def mostly(valid, invalid, weight: int = 5):
    """``valid`` about ``weight`` times as often as ``invalid`` (inside one argument's recipe)."""
    return st.one_of(*([valid] * weight), invalid)


@st.composite
def arguments(draw, spec: dict):
    """One value per argument of ``spec`` (``name -> (valid strategy, invalid strategy)``): every
    argument valid, or one or two of them drawn from their invalid strategy. So a third of the
    examples get past every check and reach the result checks, and each error path is reached
    without another argument's error hiding it."""
    names = list(spec)
    broken = draw(st.one_of(st.just([]), st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)))
    return {n: draw(spec[n][1] if n in broken else spec[n][0]) for n in names}


FINE_NORMS = st.sampled_from([0.0, 1e-3, 0.4, 0.4, 3.0])
BAD_NORMS = st.sampled_from([1e-30, 1e4, 1e10, 1e20, 1e39])
SPECIALS = st.sampled_from([float("nan"), float("inf"), float("-inf")])
DTYPES = st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16, torch.float64])
BAD_WIDTHS = st.sampled_from([D_MODEL - 1, 32, D_MODEL + 1, 1])


def tensor_recipe(*, valid: bool, width=None, rows=None):
    """("tensor", seed, width, rows, norm, special, dtype): a random direction of that norm (with
    ``special`` written into its first entry)."""
    if valid:
        return st.tuples(st.just("tensor"), st.integers(0, 3), st.just(D_MODEL if width is None else width),
                         st.just(rows), FINE_NORMS, st.none(), DTYPES)
    return st.tuples(st.just("tensor"), st.integers(0, 3), BAD_WIDTHS if width is None else st.just(width),
                     st.sampled_from([None, 1, 2, 3, 4]) if rows is None else st.just(rows),
                     st.one_of(FINE_NORMS, BAD_NORMS), st.one_of(st.none(), SPECIALS), DTYPES)


def build_tensor(r) -> torch.Tensor:
    _, seed, width, rows, norm, special, dtype = r
    g = torch.Generator().manual_seed(seed)
    shape = (width,) if rows is None else (rows, width)
    v = torch.randn(*shape, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * norm
    if special is not None:
        v[..., 0] = special
    return v.to(dtype)


SITE_HOOKS = ["resid_post", "resid_pre", "attn_out", "mlp_out"]


@st.composite
def sv_recipe(draw, *, valid: bool):
    """A SteeringVector recipe with finite directions (a non-finite one is refused by the
    dataclass itself): valid ones fit the model, invalid ones may not (layers, width, hook)."""
    if valid:
        layers = draw(st.lists(st.integers(0, N_LAYERS - 1), min_size=1, max_size=3, unique=True))
        width, norms = D_MODEL, FINE_NORMS
        hook = draw(mostly(st.just("resid_post"), st.sampled_from(SITE_HOOKS)))
    else:
        layers = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
        width, norms = draw(st.one_of(st.just(D_MODEL), BAD_WIDTHS)), st.one_of(FINE_NORMS, BAD_NORMS)
        hook = draw(st.sampled_from(SITE_HOOKS + ["z", "mlp_post", "bogus", "blocks.1.hook_resid_post"]))
    t = st.tuples(st.just("tensor"), st.integers(0, 3), st.just(width), st.none(), norms, st.none(), DTYPES)
    coeff = draw(st.sampled_from([None, None, 2.0, -1.0, 0.0] + ([] if valid else [1e30, 1e14])))
    return ("sv", {layer: draw(t) for layer in layers}, hook, coeff)


DICT_KEYS = st.integers(-N_LAYERS, N_LAYERS - 1)
BAD_DICT_KEYS = st.one_of(st.integers(-7, 7), st.sampled_from(["1", 1.0, True, None, np.int64(1), (1,)]))
JUNK_DIRECTIONS = st.sampled_from([("raw", x) for x in [
    None, "abc", b"ab", [0.1] * D_MODEL, [[0.1] * D_MODEL], np.full(D_MODEL, 0.1, dtype=np.float32), 3.0, [],
    object(), {"a": 1}]])


@st.composite
def vector_recipe(draw, batch: int, *, valid: bool):
    """A SteeringVector, ``{layer: tensor}`` or per-row list recipe; invalid ones are wrong in one
    of several ways (each about equally likely), or junk."""
    if valid:
        kind = draw(st.sampled_from(["sv", "sv", "dict", "rows"]))
        if kind == "sv":
            return draw(sv_recipe(valid=True))
        if kind == "dict":
            rows = draw(st.sampled_from([None, None, batch]))
            keys = draw(st.lists(DICT_KEYS, min_size=1, max_size=3, unique_by=lambda k: k % N_LAYERS))
            return ("dict", [(k, draw(tensor_recipe(valid=True, rows=rows))) for k in keys])
        items = draw(st.lists(st.one_of(sv_recipe(valid=True), st.none()), min_size=batch, max_size=batch))
        if all(x is None for x in items):
            items[0] = draw(sv_recipe(valid=True))
        return ("rows", items)
    kind = draw(st.sampled_from(["sv", "dict_keys", "dict_tensors", "dict_junk", "rows", "raw"]))
    if kind == "sv":
        return draw(sv_recipe(valid=False))
    if kind == "dict_keys":
        keys = draw(st.lists(st.one_of(DICT_KEYS, BAD_DICT_KEYS), max_size=3))
        return ("dict", [(k, draw(tensor_recipe(valid=True))) for k in keys])
    if kind in ("dict_tensors", "dict_junk"):
        keys = draw(st.lists(DICT_KEYS, min_size=1, max_size=2, unique_by=lambda k: k % N_LAYERS))
        bad = (st.one_of(tensor_recipe(valid=True, rows=batch + 1), tensor_recipe(valid=False)) if kind == "dict_tensors"
               else JUNK_DIRECTIONS)
        return ("dict", [(k, draw(bad)) for k in keys])
    if kind == "rows":
        n = draw(st.sampled_from([0, 1, batch, batch + 1]))
        item = st.one_of(sv_recipe(valid=True), sv_recipe(valid=False), st.none(),
                         st.sampled_from([("raw", "v"), ("raw", 1.0), ("raw", {})]))
        return ("rows", [draw(item) for _ in range(n)])
    return ("raw", draw(st.sampled_from([None, "vector", 3, [], {}, ("tensor-raw",), b"x", [None, None]])))


def build(r):
    """A recipe -> the object it describes (may raise: that is an input error of the constructor)."""
    if r is None:
        return None
    kind = r[0]
    if kind == "tensor":
        return build_tensor(r)
    if kind == "raw":
        return torch.zeros(D_MODEL) if r[1] == ("tensor-raw",) else r[1]
    if kind == "sv":
        _, dirs, hook, coeff = r
        return SteeringVector({k: build_tensor(t) for k, t in dirs.items()}, hook=hook, coeff=coeff)
    if kind == "dict":
        return {k: build(v) for k, v in r[1]}
    if kind == "rows":
        return [build(x) for x in r[1]]
    raise AssertionError(r)


def coeffs(batch: int):
    valid = st.one_of(
        st.none(), st.sampled_from([0.0, -0.0, 0, 1.0, -2.0, 3.5, 1e-30, 2, 1e6]),
        st.floats(-10, 10), st.lists(st.floats(-10, 10), min_size=batch, max_size=batch),
        st.just([0.0] * batch), st.sampled_from([("coeff", "t0"), ("coeff", "np32"), ("coeff", f"t{batch}")]),
    )
    invalid = st.one_of(
        st.sampled_from([float("nan"), float("inf"), float("-inf")]),
        st.sampled_from([1e12, 1e30, 1e39, 1e300, ("coeff", "np_big")]),
        st.sampled_from([10**400, -(10**400), [10**400] * batch, 2**1100]),
        st.sampled_from([True, False, "1.0", b"1", "", {"a": 1}, [None] * batch, object()]),
        st.sampled_from([[], [1.0] * (batch + 1), [float("nan")] * batch, ["a"] * batch, [True] * batch, [[1.0]]]),
        st.sampled_from(["tnan", "t2d", "tbool", "t1", "t2", "t3"]).map(lambda s: ("coeff", s)),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    return valid, invalid


def build_coeff(c):
    if isinstance(c, tuple) and len(c) == 2 and c[0] == "coeff":
        return {"t0": torch.tensor(2.0), "t1": torch.tensor([0.5]), "t2": torch.tensor([1.0, 0.0]),
                "t3": torch.tensor([0.5, 1.0, 2.0]), "tnan": torch.tensor(float("nan")), "t2d": torch.tensor([[1.0]]),
                "np32": np.float32(2.0), "np_big": np.float64(1e39), "tbool": torch.tensor(True)}[c[1]]
    return c


def is_zero_coeff(c) -> bool:
    """A coefficient that makes ``add``/``add_norm`` the identity (0, or 0 for every row)."""
    if isinstance(c, bool) or c is None:
        return False
    if isinstance(c, (int, float)):
        return c == 0
    if isinstance(c, list):
        return bool(c) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0 for x in c)
    return False


LAYERS = (
    st.one_of(st.none(), st.none(), st.just("all"), st.integers(-N_LAYERS, N_LAYERS - 1),
              st.lists(st.integers(-N_LAYERS, N_LAYERS - 1), min_size=1, max_size=3),
              st.lists(st.integers(0, N_LAYERS - 1), min_size=1, max_size=3).map(tuple)),
    st.one_of(st.integers(N_LAYERS, 6), st.integers(-7, -N_LAYERS - 1), st.lists(st.integers(-5, 5), max_size=4),
              st.sampled_from(["first", "", "ALL", 1.0, True, [1.0], [True], ["1"], [None], np.int64(1),
                               [np.int64(-1)], 10**30, [2**64], [0, 0], [1, -2], ("layers-tensor",)])),
)


def build_layers(layers):
    return torch.tensor([1]) if layers == ("layers-tensor",) else layers


SHORTEST_PROMPT = 3  # tokens of "hi" with its BOS: indices -3..2 are inside every prompt
IN_RANGE = st.integers(-SHORTEST_PROMPT, SHORTEST_PROMPT - 1)


def positions(batch: int):
    valid = st.one_of(st.sampled_from(["all", "all", "prompt", "generated"]), st.lists(IN_RANGE, min_size=1, max_size=3),
                      st.lists(st.lists(IN_RANGE, min_size=1, max_size=2), min_size=batch, max_size=batch))
    invalid = st.one_of(
        st.sampled_from(["bogus", "", "ALL"]), st.lists(st.integers(-30, 30), max_size=4),
        st.lists(st.lists(st.integers(-30, 30), min_size=0, max_size=3), min_size=0, max_size=batch + 1),
        st.sampled_from([3, None, 1.5, b"ab", [True], [1.0], (0, -1), [[0], 1], {"a": 1}, [np.int64(0)],
                         [[np.int64(0)]], range(2), ("positions-tensor",), [2**64], [[]]]),
    )
    return valid, invalid


def build_positions(p):
    return torch.tensor([0, -1]) if p == ("positions-tensor",) else p


OPS = (st.sampled_from(["add", "add", "add", "ablate", "clamp", "add_norm"]),
       st.sampled_from(["erase", "bogus", None, "ADD", 3]))
SITES = (st.none(), st.sampled_from(
    ["resid_post", "resid_pre", "attn_out", "mlp_out", "all", "bogus", [], ["resid_post", "resid_post"],
     ["attn_out", "mlp_out"], "resid_mid", "z", 3]))


# -- references ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def plain_logits(prompts: tuple[str, ...]) -> torch.Tensor:
    m = model()
    ids, mask, _ = tokenize(m, list(prompts), padding_side="left")
    with torch.inference_mode():
        return m(ids, attention_mask=mask)


def selected(mask: torch.Tensor, positions) -> torch.Tensor | None:
    """``[batch, seq]`` bool of the prompt positions ``positions`` names (left-padded ``mask``)."""
    real = mask.bool()
    if positions in ("all", "prompt"):
        return real
    index = mask.long().cumsum(-1) - 1
    n = real.sum(-1)
    if isinstance(positions, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in positions):
        per_row = [positions] * mask.shape[0]
    elif (isinstance(positions, list) and len(positions) == mask.shape[0]
          and all(isinstance(r, list) and r and all(type(i) is int for i in r) for r in positions)):
        per_row = positions
    else:
        return None
    sel = torch.zeros_like(real)
    for r, idx in enumerate(per_row):
        want = torch.tensor([i % int(n[r]) for i in idx])
        sel[r] = torch.isin(index[r], want) & real[r]
    return sel


def reference_add(vector, coeff):
    """The steering ``op="add"`` with default layers and sites must do, independently of steer:
    ``(hook name, delta [rows|1, d])`` per hooked layer; None where the case is not a simple one."""
    n = N_LAYERS
    if isinstance(vector, SteeringVector):
        rows, hooks, default = [vector], [vector.hook], [vector.coeff if vector.coeff is not None else 1.0]
    elif isinstance(vector, list) and all(v is None or isinstance(v, SteeringVector) for v in vector):
        rows = vector
        hooks = [v.hook for v in vector if v is not None]
        default = [1.0 if v is None or v.coeff is None else v.coeff for v in vector]
    elif isinstance(vector, dict) and all(isinstance(v, torch.Tensor) for v in vector.values()):
        dirs = {k % n: v.float() for k, v in vector.items()}
        n_rows = max([v.shape[0] for v in dirs.values() if v.ndim == 2], default=1)
        rows = [None] * n_rows
        as_rows = [{k: (v[r] if v.ndim == 2 else v) for k, v in dirs.items()} for r in range(n_rows)]
        hooks, default = ["resid_post"], 1.0
    else:
        return None
    if len(set(hooks)) != 1:
        return None
    site = hook_kind(hooks[0])
    if not isinstance(vector, dict):
        as_rows = [dict(v.directions) if v is not None else {} for v in rows]
    layers = sorted({k for r in as_rows for k in r})
    c = default if coeff is None else coeff
    if isinstance(c, torch.Tensor):
        c = c.tolist()
    out = []
    for layer in layers:
        v = torch.stack([r.get(layer, torch.zeros(D_MODEL)) for r in as_rows])  # [rows, d]
        if isinstance(c, list):
            ct = torch.tensor([float(x) for x in c])
            delta = ct.view(-1, 1) * v if len(as_rows) > 1 else ct.view(-1, 1) * v[0]
        else:
            delta = c * (v if len(as_rows) > 1 else v[0:1])
        out.append((f"blocks.{layer}.hook_{site}", delta))
    return out


def reference_logits(ids, mask, deltas, sel) -> torch.Tensor:
    m = model()

    def make(delta):
        def hook(x, hook):
            d = delta.to(x.dtype)
            return x + sel[..., None].to(x.dtype) * d[:, None, :]
        return hook

    with torch.inference_mode(), m.hooks(fwd_hooks=[(name, make(delta)) for name, delta in deltas]):
        return m(ids, attention_mask=mask)


# -- (b) steer.apply around a forward pass ---------------------------------------------------------

@st.composite
def steering_case(draw):
    batch = draw(st.integers(1, 3))
    return {"batch": batch, **draw(arguments({
        "vector": (vector_recipe(batch, valid=True), vector_recipe(batch, valid=False)),
        "coeff": coeffs(batch), "layers": LAYERS, "op": OPS, "positions": positions(batch), "sites": SITES,
    }))}


SV1 = ("sv", {1: ("tensor", 0, D_MODEL, None, 0.4, None, torch.float32)}, "resid_post", None)  # a valid one-layer vector


@props(60)
@given(case=steering_case())
@example(case=dict(batch=1, vector=SV1, coeff=10**400, layers=None, op="add", positions="all", sites=None))
@example(case=dict(batch=1, vector=("dict", [(1, None)]), coeff=None, layers=None, op="add", positions="all", sites=None))
def test_apply_around_a_forward_pass(case):
    m = model()
    prompts = tuple(PROMPTS[: case["batch"]])
    ids, mask, _ = tokenize(m, list(prompts), padding_side="left")
    coeff, layers = build_coeff(case["coeff"]), build_layers(case["layers"])
    positions = build_positions(case["positions"])
    op, sites = case["op"], case["sites"]

    def run():
        vector = build(case["vector"])
        with torch.inference_mode(), steer.apply(m, vector, coeff=coeff, layers=layers, op=op,
                                                 positions=positions, sites=sites):
            return vector, m(ids, attention_mask=mask)

    got, err = attempt(run)
    assert no_hooks_left(m), "a hook was left on the model"
    if err is not None:
        return
    vector, logits = got
    assert logits.shape == (len(prompts), ids.shape[1], 257)
    assert torch.isfinite(logits).all(), "steered logits hold NaN/inf"
    plain = plain_logits(prompts)
    if op in ("add", "add_norm") and is_zero_coeff(coeff):
        torch.testing.assert_close(logits, plain, atol=0, rtol=0, msg="coeff=0 must leave the logits unchanged")
    if positions == "generated":  # a plain forward pass generates nothing
        torch.testing.assert_close(logits, plain, atol=0, rtol=0, msg="positions='generated' steered a prompt")
    if isinstance(vector, list) and len(vector) == len(prompts):
        for r, v in enumerate(vector):
            if v is None and op in ("add", "ablate", "clamp", "add_norm"):
                torch.testing.assert_close(logits[r], plain[r], atol=0, rtol=0, msg=f"row {r} (vector None) was steered")
    if op == "add" and layers is None and sites is None:
        deltas = reference_add(vector, coeff)
        sel = selected(mask, positions)
        if deltas is not None and sel is not None:
            want = reference_logits(ids, mask, deltas, sel)
            torch.testing.assert_close(logits, want, atol=0, rtol=0, msg="add differs from a manual hook")


# -- (b) steer.generate ------------------------------------------------------------------------------

GEN_TEXTS = st.sampled_from(["hi", "the cat", "a b c d", "hello there, my friend"])
BAD_PROMPTS = st.sampled_from([[], [""], [3], "", "x" * 300, ["hi", None], None, b"hi"])


@st.composite
def generation_case(draw):
    n = draw(st.integers(1, 3))
    good_prompts = st.lists(GEN_TEXTS, min_size=n, max_size=n)
    if n == 1:
        good_prompts = st.one_of(good_prompts, GEN_TEXTS, GEN_TEXTS.map(lambda t: (t,)))
    return draw(arguments({
        "prompts": (good_prompts, BAD_PROMPTS),
        "vector": (st.one_of(st.none(), vector_recipe(n, valid=True)), vector_recipe(n, valid=False)),
        "coeff": coeffs(n), "layers": LAYERS, "positions": positions(n),
        "batch_size": (st.sampled_from([None, 1, 2, 3]), st.sampled_from([0, -1, True, 1.5, "2"])),
        "do_sample": (st.booleans(), st.sampled_from(["yes", None, 1])),
        "seed": (st.sampled_from([None, 0, 7, 2**31]), st.sampled_from([-1, True, 1.5, "1", 2**63, 2**64])),
        "max_new_tokens": (st.integers(1, 3), st.sampled_from([0, -1, True, 2.0, "3", 10**6, 300, None])),
    }))


@props(50)
@given(case=generation_case())
@example(case=dict(prompts=["hi", "the cat"], vector=("rows", [None, SV1]), coeff=None, layers=None, positions="all",
                   batch_size=None, do_sample=False, seed=None, max_new_tokens=2))
def test_generate(case):
    m = model()
    c = dict(case)
    prompts = c.pop("prompts")
    coeff, layers, positions = build_coeff(c.pop("coeff")), build_layers(c.pop("layers")), build_positions(c.pop("positions"))
    recipe = c.pop("vector")

    def run():
        vector = build(recipe)
        return vector, steer.generate(m, prompts, vector, coeff=coeff, layers=layers, positions=positions, **c)

    got, err = attempt(run)
    assert no_hooks_left(m), "a hook was left on the model"
    if err is not None:
        return
    vector, texts = got
    if isinstance(prompts, str):
        assert isinstance(texts, str)
        texts = [texts]
    else:
        assert isinstance(texts, list) and len(texts) == len(prompts) and all(isinstance(t, str) for t in texts)
    reproducible = not c["do_sample"] or c["seed"] is not None
    if not reproducible:
        return
    if vector is None or is_zero_coeff(coeff):
        plain = steer.generate(m, prompts, None, **c)
        assert (plain if not isinstance(prompts, str) else [plain]) == texts, "unsteered generation differs"
    elif not isinstance(prompts, str) and len(prompts) > 1 and c["batch_size"] != 1:
        try:
            one = steer.generate(m, prompts, vector, coeff=coeff, layers=layers, positions=positions,
                                 **{**c, "batch_size": 1})
        except USER_ERRORS as e:
            raise AssertionError(f"batch_size={c['batch_size']} generated, batch_size=1 raised {e!r}") from e
        assert one == texts, "steered generation depends on batch_size"
    assert no_hooks_left(m)


# -- (a) capture ---------------------------------------------------------------------------------------

CAPTURE_HOOKS = (
    st.sampled_from(["resid_post", "resid_pre", "attn_out", "mlp_out", "z", "mlp_post", "resid_mid",
                     "blocks.1.hook_resid_post", "hook_embed", "ln_final.hook_normalized",
                     ["resid_post", "blocks.0.hook_resid_post"], ["hook_embed", "resid_post"],
                     ["blocks.2.hook_mlp_out", "blocks.0.hook_resid_pre"]]),
    st.sampled_from(["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores", "blocks.9.hook_resid_post",
                     "bogus", "", [], 3, None, ["resid_post", 3], b"resid_post"]),
)
CAPTURE_TEXTS = st.sampled_from(["hi", "the cat", "a", "hello there, my friend", "x y z"])
SHORTEST_CAPTURE = 2  # tokens of "a" with its BOS
CAPTURE_DTYPES = (st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16, torch.float64]),
                  st.sampled_from([torch.int64, torch.bool, torch.complex64, "float32", None, 3]))


@st.composite
def capture_case(draw):
    n = draw(st.integers(1, 4))
    good_prompts = st.lists(CAPTURE_TEXTS, min_size=n, max_size=n)
    if n == 1:
        good_prompts = st.one_of(good_prompts, CAPTURE_TEXTS)
    good_pos = st.one_of(st.integers(-SHORTEST_CAPTURE, SHORTEST_CAPTURE - 1),
                         st.sampled_from([(0, 1), (0, 2), (1, 2), [0, 2]]))
    bad_pos = st.one_of(st.integers(-30, 30), st.tuples(st.integers(-2, 30), st.integers(-2, 30)),
                        st.sampled_from([True, 1.5, (0, 1, 2), "0", None, (True, 2), (0, 2.0), (2**64, 1)]))
    return draw(arguments({
        "prompts": (good_prompts, BAD_PROMPTS),
        "hooks": CAPTURE_HOOKS, "layers": LAYERS,
        "pool": (st.one_of(st.sampled_from(["last", "mean", "all"]), st.lists(good_pos, min_size=n, max_size=n)),
                 st.one_of(st.sampled_from(["bogus", "", None, 3, "LAST"]),
                           st.lists(st.one_of(good_pos, bad_pos), min_size=0, max_size=n + 1))),
        "batch_size": (st.sampled_from([1, 2, 3, 16]), st.sampled_from([0, -1, True, 1.5, "2", None])),
        "dtype": CAPTURE_DTYPES,
    }))


def reference_capture(names, prompts, pool):
    """Per prompt, alone: the hook's ``[pos, d]`` activation pooled as ``pool`` says."""
    m = model()
    out = {n: [] for n in names}
    for i, p in enumerate(prompts):
        ids, mask, _ = tokenize(m, [p])
        seen = {}

        def make(name):
            def hook(x, hook):
                seen[name] = x[0].reshape(x.shape[1], -1).float().clone()
            return hook

        with torch.inference_mode(), m.hooks(fwd_hooks=[(n, make(n)) for n in names]):
            m(ids, attention_mask=mask)
        for n in names:
            x = seen[n]
            if pool == "last":
                out[n].append(x[-1:])
            elif pool == "mean":
                out[n].append(x.mean(0, keepdim=True))
            elif pool == "all":
                out[n].append(x)
            else:
                q = pool[i]
                out[n].append(x[q % len(x)][None] if isinstance(q, int) else x[q[0] : q[1]].mean(0, keepdim=True))
    return {n: torch.cat(v) for n, v in out.items()}


@props(50)
@given(case=capture_case())
@example(case=dict(prompts=["hi"], hooks="resid_post", layers=None, pool="last", batch_size=1, dtype=torch.int64))
def test_capture(case):
    m = model()
    kw = dict(case)
    acts, err = attempt(lambda: steerlens.capture(m, kw.pop("prompts"), kw.pop("hooks"), progress=False, **kw))
    assert no_hooks_left(m), "a hook was left on the model"
    if err is not None:
        return
    prompts = [case["prompts"]] if isinstance(case["prompts"], str) else list(case["prompts"])
    dtype = case["dtype"]
    if dtype is None:  # taken as "the model's dtype"
        dtype = torch.float32
    assert isinstance(dtype, torch.dtype) and dtype.is_floating_point, \
        f"capture accepted dtype={dtype!r} (activations truncated to it) instead of raising ValueError/TypeError"
    assert len(acts) == len(prompts) and acts.hooks
    want = reference_capture(acts.hooks, prompts, case["pool"])
    for name in acts.hooks:
        x = acts[name]
        assert x.dtype == dtype, f"{name}: dtype {x.dtype}, asked for {dtype}"
        assert torch.isfinite(x.float()).all(), f"{name}: NaN/inf in captured activations"
        tol = dict(atol=1e-5, rtol=1e-4) if dtype in (torch.float32, torch.float64) else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(x.float(), want[name].to(dtype).float(), **tol,
                                   msg=f"{name}: batched capture differs from one prompt at a time")


# -- (c) SteeringVector.load on corrupted files --------------------------------------------------------

DEEP = "<5000 nested JSON arrays>"  # built in the test: a falsifying example prints short


def undeep(text: str) -> str:
    return "[" * 5000 + "]" * 5000 if text == DEEP else text


JSON_JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=4), st.sampled_from([10**400, -(10**400), 2**63, 1e308, ""])),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=5,
)
RAW_META_JUNK = st.sampled_from(["not json", "{", "", DEEP, '"\\ud800"', "NaN", "1e999", "\x00"])
VECTOR_META_KEYS = ["format", "version", "hook", "layers", "d_model", "method", "model_name", "fingerprint", "dataset",
                    "dataset_hash", "created", "coeff", "info"]

CORRUPTION = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.sampled_from(["header", "body", "anywhere"]),
              st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("garbage"), st.one_of(st.binary(max_size=64), st.sampled_from([
        b"", b"\x00" * 8, struct.pack("<Q", 2**63) + b"{}", struct.pack("<Q", 2) + b"{}",
        struct.pack("<Q", 20) + b'{"a": 1}' + b" " * 12, struct.pack("<Q", 7) + b"[1,2,3]"]))),
    st.tuples(st.just("drop_meta"), st.lists(st.sampled_from(VECTOR_META_KEYS), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("set_meta"), st.sampled_from(VECTOR_META_KEYS + ["extra", "__metadata__"]), JSON_JUNK),
    st.tuples(st.just("raw_meta"), st.sampled_from(VECTOR_META_KEYS + ["extra"]), RAW_META_JUNK),
    st.tuples(st.just("no_meta")),
    st.tuples(st.just("tensors"), st.sampled_from(
        ["drop", "extra_layer", "extra_other", "bf16", "f16", "f64", "i64", "bool", "i8", "longer", "shorter", "2d",
         "scalar", "nan", "inf", "huge_f64"])),
    st.tuples(st.just("missing")),
    st.tuples(st.just("directory")),
)


@st.composite
def saved_vector_recipe(draw):
    layers = draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
    width = draw(st.sampled_from([1, 4, D_MODEL]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    return dict(layers=layers, width=width, dtype=dtype, seed=draw(st.integers(0, 3)),
                coeff=draw(st.sampled_from([None, 0.5, -3.0, 1e30])),
                info=draw(st.sampled_from([{}, {"kl": 0.1, "pool": "last"}, {"nested": {"a": [1, 2]}}])),
                dataset=draw(st.sampled_from([None, "sentiment"])))


def make_vector(r) -> SteeringVector:
    g = torch.Generator().manual_seed(r["seed"])
    dirs = {layer: torch.randn(r["width"], generator=g).to(r["dtype"]) for layer in r["layers"]}
    return SteeringVector(dirs, method="mean_diff", model_name="tiny", fingerprint="abc123", dataset=r["dataset"],
                          coeff=r["coeff"], info=r["info"])


def _flip(data: bytearray, region: str, flips) -> None:
    header = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    lo, hi = {"header": (0, header), "body": (header, len(data)), "anywhere": (0, len(data))}[region]
    if hi <= lo:
        lo, hi = 0, len(data)
    for frac, x in flips:
        i = lo + int(frac * (hi - lo))
        data[i] ^= x


def _tensor_edit(tensors: dict, how: str, width: int) -> dict:
    name = sorted(tensors)[0]
    t = tensors[name]
    t2 = dict(tensors)
    if how == "drop":
        del t2[name]
    elif how == "extra_layer":
        t2["layer.99"] = t.clone()
    elif how == "extra_other":
        t2["bias"] = t.clone()
    elif how in ("bf16", "f16", "f64", "i64", "bool", "i8"):
        dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f64": torch.float64, "i64": torch.int64,
              "bool": torch.bool, "i8": torch.int8}[how]
        t2[name] = t.to(dt)
    elif how == "longer":
        t2[name] = torch.cat([t, t[:1]])
    elif how == "shorter":
        t2[name] = t[: max(0, width - 1)].clone()
    elif how == "2d":
        t2[name] = t[None].clone()
    elif how == "scalar":
        t2[name] = t[0].clone()
    elif how in ("nan", "inf"):
        t2[name] = t.clone()
        t2[name][0] = float(how)
    elif how == "huge_f64":
        t2[name] = t.double() * 1e300  # finite in float64, inf once converted to float32
    return t2


def corrupt_safetensors(path: Path, corruption) -> None:
    """Apply ``corruption`` to the safetensors file at ``path`` (written by ``save_tensors``)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    kind = corruption[0]
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        path.write_bytes(bytes(data[: int(corruption[1] * len(data))]))
    elif kind == "flip":
        _flip(data, corruption[1], corruption[2])
        path.write_bytes(bytes(data))
    elif kind == "garbage":
        path.write_bytes(corruption[1])
    elif kind in ("drop_meta", "set_meta", "raw_meta", "no_meta", "tensors"):
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if kind == "drop_meta":
            for k in corruption[1]:
                meta.pop(k, None)
        elif kind == "set_meta":
            meta[corruption[1]] = json.dumps(corruption[2])
        elif kind == "raw_meta":
            meta[corruption[1]] = undeep(corruption[2])
        elif kind == "no_meta":
            meta = None
        else:
            width = next(iter(tensors.values())).numel()
            tensors = _tensor_edit(tensors, corruption[1], width)
        path.unlink()
        save_file(tensors, str(path), metadata=meta)
    elif kind == "missing":
        path.unlink()
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    else:
        assert kind == "none"


VEC1 = dict(layers=[0], width=4, dtype=torch.float32, seed=0, coeff=None, info={}, dataset=None)


@props(60)
@given(recipe=saved_vector_recipe(), corruption=CORRUPTION)
@example(recipe=VEC1, corruption=("set_meta", "coeff", 10**400))
@example(recipe=VEC1, corruption=("raw_meta", "hook", DEEP))
def test_vector_load_on_corrupted_files(recipe, corruption):
    saved = make_vector(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.safetensors"
        saved.save(path)
        corrupt_safetensors(path, corruption)
        allowed = (ValueError, FileNotFoundError) if corruption[0] in ("missing", "directory") else (ValueError,)
        got, err = attempt(lambda: SteeringVector.load(path), allowed=allowed)
    if corruption[0] in ("missing", "directory"):
        assert isinstance(err, FileNotFoundError), f"a {corruption[0]} path gave {got!r} / {err!r}"
        return
    if corruption[0] == "none":
        assert err is None, f"an intact file was refused: {err}"
    if err is not None:
        return
    assert isinstance(got, SteeringVector)
    assert got.layers and all(v.dtype == torch.float32 and v.ndim == 1 for v in got.directions.values())
    assert len({v.numel() for v in got.directions.values()}) == 1
    assert all(torch.isfinite(v).all() for v in got.directions.values())
    assert got.coeff is None or math.isfinite(got.coeff)
    if corruption[0] == "none":
        assert got.layers == saved.layers
        for layer in saved.layers:
            torch.testing.assert_close(got[layer], saved[layer], atol=0, rtol=0)
        assert got.metadata() == saved.metadata()


# -- (c) Activations.load on corrupted manifests and shards ---------------------------------------------

MANIFEST_KEYS = ["format", "version", "hooks", "shards", "lengths", "rows", "pool", "info"]
MANIFEST_VALUES = st.one_of(JSON_JUNK, st.sampled_from([
    [], ["../x.safetensors"], ["/etc/hostname"], ["manifest.json"], ["nope.safetensors"], [""], ["."],
    ["shard-00000.safetensors"], ["shard-00000.safetensors", "shard-00000.safetensors"], [-1, 3], [10**20, 1],
    [1.5, 2], [True, False], [{}], [{"prompt": "a"}] * 5, "all", "last", "positions", 2, True, "1", -1, 0,
    ["blocks.0.hook_resid_post"], ["blocks.0.hook_resid_post", "blocks.0.hook_resid_post"], ["nope"],
]))
ACT_CORRUPTION = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("manifest_truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("manifest_flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                                 min_size=1, max_size=4)),
    st.tuples(st.just("manifest_text"), st.sampled_from(
        ["", "[]", "null", "3", '"x"', "{", "\xff", "[" * 50, DEEP, '{"format": "steerlens.activations"}'])),
    st.tuples(st.just("manifest_drop"), st.lists(st.sampled_from(MANIFEST_KEYS), min_size=1, max_size=2, unique=True)),
    st.tuples(st.just("manifest_set"), st.sampled_from(MANIFEST_KEYS + ["extra"]), MANIFEST_VALUES),
    st.tuples(st.just("manifest_missing")),
    st.tuples(st.just("shard_truncate"), st.integers(0, 1), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("shard_flip"), st.integers(0, 1), st.sampled_from(["header", "body", "anywhere"]),
              st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("shard_garbage"), st.integers(0, 1), st.binary(max_size=32)),
    st.tuples(st.just("shard_delete"), st.integers(0, 1)),
    st.tuples(st.just("shard_dir"), st.integers(0, 1)),
    st.tuples(st.just("shard_replace"), st.integers(0, 1), st.sampled_from(
        ["no_hook", "scalar", "more_rows", "fewer_rows", "wider", "1d", "3d", "f16", "i64", "empty", "nan"])),
)


@st.composite
def saved_acts_recipe(draw):
    pool = draw(st.sampled_from(["last", "all", "mean"]))
    rows_per_shard = [draw(st.integers(1, 3)), draw(st.integers(0, 3))]
    return dict(pool=pool, rows_per_shard=rows_per_shard, width=draw(st.sampled_from([1, 8])),
                dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
                labels=draw(st.booleans()))


HOOK_NAMES = ["blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"]


def write_acts(path: Path, r):
    """Two shards of two hooks; for ``pool="all"`` every prompt has 2 tokens."""
    g = torch.Generator().manual_seed(0)
    per_row = 2 if r["pool"] == "all" else 1
    n = sum(r["rows_per_shard"])
    rows = [{"prompt": f"p{i}", **({"label": i % 2} if r["labels"] else {})} for i in range(n)]
    lengths = [per_row if r["pool"] == "all" else 3] * n
    tensors = {h: [] for h in HOOK_NAMES}
    with ShardWriter(path) as w:
        for k in r["rows_per_shard"]:
            shard = {h: torch.randn(k * per_row, r["width"], generator=g).to(r["dtype"]) for h in HOOK_NAMES}
            for h in HOOK_NAMES:
                tensors[h].append(shard[h])
            w.add(shard)
        w.finish(rows, lengths, pool=r["pool"], info={"model": "tiny"})
    return {h: torch.cat(v) for h, v in tensors.items()}, rows, lengths


def corrupt_acts(path: Path, c) -> None:
    from safetensors.torch import save_file

    kind = c[0]
    manifest = path / "manifest.json"
    shards = sorted(p for p in path.iterdir() if p.name.startswith("shard-"))
    if kind == "manifest_truncate":
        data = manifest.read_bytes()
        manifest.write_bytes(data[: int(c[1] * len(data))])
    elif kind == "manifest_flip":
        data = bytearray(manifest.read_bytes())
        for frac, x in c[1]:
            data[int(frac * len(data))] ^= x
        manifest.write_bytes(bytes(data))
    elif kind == "manifest_text":
        if c[1] == "\xff":
            manifest.write_bytes(b"\xff\xfe{")
        else:
            manifest.write_text(undeep(c[1]), encoding="utf-8")
    elif kind in ("manifest_drop", "manifest_set"):
        m = json.loads(manifest.read_text())
        if kind == "manifest_drop":
            for k in c[1]:
                m.pop(k, None)
        else:
            m[c[1]] = c[2]
        manifest.write_text(json.dumps(m))
    elif kind == "manifest_missing":
        manifest.unlink()
    elif kind.startswith("shard_"):
        shard = shards[min(c[1], len(shards) - 1)]
        if kind == "shard_truncate":
            data = shard.read_bytes()
            shard.write_bytes(data[: int(c[2] * len(data))])
        elif kind == "shard_flip":
            data = bytearray(shard.read_bytes())
            _flip(data, c[2], c[3])
            shard.write_bytes(bytes(data))
        elif kind == "shard_garbage":
            shard.write_bytes(c[2])
        elif kind == "shard_delete":
            shard.unlink()
        elif kind == "shard_dir":
            shard.unlink()
            shard.mkdir()
        elif kind == "shard_replace":
            from safetensors import safe_open

            with safe_open(str(shard), framework="pt") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
            h = HOOK_NAMES[0]
            x = t[h]
            how = c[2]
            if how == "no_hook":
                del t[h]
            elif how == "scalar":
                t[h] = torch.tensor(1.0)
            elif how == "more_rows":
                t[h] = torch.cat([x, x[:1] if len(x) else torch.zeros(1, x.shape[1], dtype=x.dtype)])
            elif how == "fewer_rows":
                t[h] = x[1:].clone()
            elif how == "wider":
                t[h] = torch.cat([x, x], 1)
            elif how == "1d":
                t[h] = x.reshape(-1).clone()
            elif how == "3d":
                t[h] = x[:, None].clone()
            elif how == "f16":
                t[h] = x.half()
            elif how == "i64":
                t[h] = x.long()
            elif how == "empty":
                t[h] = x[:0].clone()
            elif how == "nan":
                t[h] = torch.full_like(x, float("nan"))
            shard.unlink()
            save_file(t, str(shard))
    else:
        assert kind == "none"


def _read_everything(path: Path):
    acts = Activations.load(path)
    tensors = {h: acts[h] for h in acts.hooks}
    _ = (len(acts), acts.lengths, acts.layers, repr(acts))
    if acts.pool == "all":
        _ = acts.offsets
    return acts, tensors


ACTS1 = dict(pool="last", rows_per_shard=[1, 1], width=8, dtype=torch.float32, labels=False)


@props(60)
@given(recipe=saved_acts_recipe(), corruption=ACT_CORRUPTION)
@example(recipe=ACTS1, corruption=("shard_replace", 1, "wider"))
@example(recipe=ACTS1, corruption=("manifest_text", DEEP))
def test_activations_load_on_corrupted_directories(recipe, corruption):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts"
        want, rows, lengths = write_acts(path, recipe)
        corrupt_acts(path, corruption)
        got, err = attempt(lambda: _read_everything(path), allowed=(ValueError, TypeError, FileNotFoundError))
    if corruption[0] == "manifest_missing":
        assert isinstance(err, FileNotFoundError)
        return
    if corruption[0] == "none":
        assert err is None, f"an intact directory was refused: {err}"
    if err is not None:
        return
    acts, tensors = got
    n = int(sum(acts.lengths.tolist())) if acts.pool == "all" else len(acts.rows)
    for h, x in tensors.items():
        assert x.ndim >= 1 and x.shape[0] == n, f"{h}: {tuple(x.shape)} rows for {n}"
    if corruption[0] == "none":
        assert acts.hooks == HOOK_NAMES and acts.rows == rows and acts.lengths.tolist() == lengths
        assert acts.pool == recipe["pool"] and acts.info == {"model": "tiny"}
        for h in HOOK_NAMES:
            torch.testing.assert_close(tensors[h], want[h], atol=0, rtol=0)
