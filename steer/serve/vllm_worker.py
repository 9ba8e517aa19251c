"""Per-request steering inside vLLM's workers: a worker extension (``worker_extension_cls``).

vLLM flattens the running requests into one ``[tokens, d]`` batch. A forward hook on every
decoder layer steers it: at the first layer of each forward call it finds every request's rows
(``query_start_loc`` from the forward context, the request ids from the model runner's input
batch), reads the request's steering spec from its ``SamplingParams.extra_args["steerlens"]``
(plain data: directions, coefficients, op, positions) and turns them into a per-layer plan of
row segments; each layer then applies its part to those rows only, at the positions they name.
Requests without a spec are left as they are; nothing is kept on the model between requests
except a bounded cache of parsed specs keyed by request id and the current forward's plan.

Layer ``L`` is steerlens' layer ``L``: the output of decoder block ``L``
(``blocks.L.hook_resid_post``). vLLM's decoder layers return ``(hidden, residual)`` whose sum is
the residual stream; a steered stream ``h'`` is written back as ``(h' - residual, residual)``.

Learned from UK AISI's vllm-lens (hooks on decoder layers, request rows from
``query_start_loc``) and transformer-lens' vLLM bridge; no code is copied.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any

import torch

KEY = "steerlens"
_CACHE = 4096  # parsed specs kept (request ids are unique; old ones fall out)


def _layers(model: torch.nn.Module) -> Any:
    m: Any = model
    for path in (("language_model", "model", "layers"), ("model", "layers"), ("model", "decoder", "layers")):
        cur = m
        for p in path:
            cur = getattr(cur, p, None)
            if cur is None:
                break
        if cur is not None:
            return cur
    raise AttributeError(f"steerlens: cannot find the decoder layers of {type(model).__name__}")


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def apply_entry(h: torch.Tensor, op: str, v: torch.Tensor, c: float) -> torch.Tensor:
    """``h [n, d]`` steered by one entry (the formulas of ``steer.operators``)."""
    if op == "add":
        return h + c * v
    u = _unit(v)
    proj = h @ u
    if op == "ablate":
        return h - proj[:, None] * u
    if op == "clamp":
        return h + (c - proj)[:, None] * u
    if op == "add_norm":
        return h + c * h.norm(dim=-1, keepdim=True) * u
    raise ValueError(f"unknown op {op!r}")


class SteeringWorker:
    """Mixed into vLLM's worker; ``collective_rpc("steerlens_install")`` adds the hooks.

    Once per forward call (at the first decoder layer that runs) the batch's requests are read
    and turned into a per-layer plan of row segments; each layer's hook then only applies it."""

    def steerlens_install(self) -> int:
        if getattr(self, "_steerlens_handles", None):
            return len(self._steerlens_handles)
        self._steerlens_specs: OrderedDict[str, Any] = OrderedDict()
        self._steerlens_step: tuple[int, int, dict] = (-1, -1, {})  # (forward context id, last layer, plan)
        layers = _layers(self.model_runner.model)
        self._steerlens_handles = [layer.register_forward_hook(self._steerlens_hook(i)) for i, layer in enumerate(layers)]
        return len(self._steerlens_handles)

    def steerlens_remove(self) -> None:
        for h in getattr(self, "_steerlens_handles", []):
            h.remove()
        self._steerlens_handles = []

    def _steerlens_spec(self, req_id: str, extra: dict | None, device) -> Any:
        if not extra or KEY not in extra:
            return None
        got = self._steerlens_specs.get(req_id)
        if got is None:
            got = []
            for e in extra[KEY]:
                dirs = {int(k): torch.tensor(v, dtype=torch.float32, device=device) for k, v in e["dirs"].items()}
                c = float(e["coeff"])
                got.append({"op": e["op"], "coeff": c, "positions": e["positions"], "dirs": dirs,
                            "cv": {k: c * v for k, v in dirs.items()} if e["op"] == "add" else None})
            self._steerlens_specs[req_id] = got
            while len(self._steerlens_specs) > _CACHE:
                self._steerlens_specs.popitem(last=False)
        return got

    def _steerlens_plan(self, device) -> dict[int, Any]:
        """``{layer: plan}`` for this forward call. A plan is ``(rows, delta)`` when every entry at
        the layer adds (``rows [r]`` the steered row indices, ``delta [r, d]`` the sum of ``c·v``
        over the entries selecting each row), else a list of ``(start, end, [(op, v, c), ...])``
        row segments applied in entry order. A request's rows split at its prompt/generated
        boundary into at most two segments, so each entry selects whole segments."""
        from vllm.forward_context import get_forward_context

        runner = self.model_runner
        n = runner.input_batch.num_reqs
        steered = []
        for i, req_id in enumerate(runner.input_batch.req_ids[:n]):
            state = runner.requests.get(req_id)
            extra = state.sampling_params.extra_args if state is not None and state.sampling_params else None
            spec = self._steerlens_spec(req_id, extra, device)
            if spec:
                steered.append((i, state, spec))
        if not steered:
            return {}
        meta = get_forward_context().attn_metadata
        if isinstance(meta, list):
            meta = meta[0]
        qsl = seq_lens = None
        for m in (meta.values() if isinstance(meta, dict) else [meta]):
            if hasattr(m, "query_start_loc"):
                qsl, seq_lens = m.query_start_loc, getattr(m, "seq_lens", None)
                break
        if qsl is None:
            raise RuntimeError("steerlens: vLLM's attention metadata has no query_start_loc; "
                               "this vLLM version is not supported")
        qsl = qsl.tolist() if isinstance(qsl, torch.Tensor) else list(qsl)
        seq_lens = seq_lens.tolist() if isinstance(seq_lens, torch.Tensor) else list(seq_lens)
        segs: dict[int, list] = {}  # layer -> [(start, end, [(op, v, c, cv)])]
        for i, state, spec in steered:
            start, end = int(qsl[i]), int(qsl[i + 1])
            if end <= start:
                continue
            first = int(seq_lens[i]) - (end - start)  # absolute position of the first row
            n_prompt = int(state.num_prompt_tokens) if hasattr(state, "num_prompt_tokens") else len(state.prompt_token_ids)
            cut = start + min(max(n_prompt - first, 0), end - start)  # rows before it are prompt rows
            parts = {"all": ((start, cut), (cut, end)), "prompt": ((start, cut),), "generated": ((cut, end),)}
            mine: dict[tuple[int, int, int], list] = {}
            for e in spec:
                for layer, v in e["dirs"].items():
                    for a, b in parts[e["positions"]]:
                        if b > a:
                            mine.setdefault((layer, a, b), []).append(
                                (e["op"], v, e["coeff"], e["cv"][layer] if e["cv"] else None))
            for (layer, a, b), ops in sorted(mine.items(), key=lambda t: (t[0][0], t[0][1])):
                segs.setdefault(layer, []).append((a, b, ops))
        plan: dict[int, Any] = {}
        for layer, ss in segs.items():
            if all(op == "add" for _, _, ops in ss for op, *_ in ops):
                rows = torch.cat([torch.arange(a, b, device=device) for a, b, _ in ss])
                delta = torch.cat([functools.reduce(torch.add, [cv for *_, cv in ops]).expand(b - a, -1)
                                   for a, b, ops in ss])
                plan[layer] = (rows, delta)
            else:
                plan[layer] = [(a, b, [(op, v, c) for op, v, c, _ in ops]) for a, b, ops in ss]
        return plan

    def _steerlens_hook(self, layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            from vllm.forward_context import get_forward_context, is_forward_context_available

            if not is_forward_context_available():
                return None
            hidden, residual = (output if isinstance(output, tuple) else (output, None))[:2]
            ctx_id, last, plan = self._steerlens_step
            if id(get_forward_context()) != ctx_id or layer <= last:  # a new forward call
                plan = self._steerlens_plan(hidden.device)
                ctx_id = id(get_forward_context())
            self._steerlens_step = (ctx_id, layer, plan)
            p = plan.get(layer)
            if p is None:
                return None
            out = hidden.clone()
            if isinstance(p, tuple):  # every entry adds: one gather, one add, one scatter
                rows, delta = p
                h = hidden[rows] + residual[rows] if residual is not None else hidden[rows]
                h = (h.float() + delta).to(hidden.dtype)
                out[rows] = (h - residual[rows]) if residual is not None else h
            else:
                for a, b, ops in p:
                    h = (hidden[a:b] + residual[a:b]) if residual is not None else hidden[a:b]
                    h = h.float()
                    for op, v, c in ops:
                        h = apply_entry(h, op, v, c)
                    h = h.to(hidden.dtype)
                    out[a:b] = (h - residual[a:b]) if residual is not None else h
            return (out, residual, *output[2:]) if isinstance(output, tuple) else out

        return hook
