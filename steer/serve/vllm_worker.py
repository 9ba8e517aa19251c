"""Per-request steering inside vLLM's workers: a worker extension (``worker_extension_cls``).

vLLM flattens the running requests into one ``[tokens, d]`` batch. After each decoder layer a
forward hook finds every request's rows (``query_start_loc`` from the forward context, the
request ids from the model runner's input batch), reads the request's steering spec from its
``SamplingParams.extra_args["steerlens"]`` (plain data: directions, coefficients, op, positions),
and applies it to those rows only, at the positions it names. Requests without a spec are left
as they are; nothing is kept on the model between requests except a bounded cache of parsed
specs keyed by request id.

Layer ``L`` is steerlens' layer ``L``: the output of decoder block ``L``
(``blocks.L.hook_resid_post``). vLLM's decoder layers return ``(hidden, residual)`` whose sum is
the residual stream; a steered stream ``h'`` is written back as ``(h' - residual, residual)``.

Learned from UK AISI's vllm-lens (hooks on decoder layers, request rows from
``query_start_loc``) and transformer-lens' vLLM bridge; no code is copied.
"""

from __future__ import annotations

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
    """Mixed into vLLM's worker; ``collective_rpc("steerlens_install")`` adds the hooks."""

    def steerlens_install(self) -> int:
        if getattr(self, "_steerlens_handles", None):
            return len(self._steerlens_handles)
        self._steerlens_specs: OrderedDict[str, Any] = OrderedDict()
        layers = _layers(self.model_runner.model)
        self._steerlens_handles = [layer.register_forward_hook(self._steerlens_hook(i)) for i, layer in enumerate(layers)]
        return len(self._steerlens_handles)

    def steerlens_remove(self) -> None:
        for h in getattr(self, "_steerlens_handles", []):
            h.remove()
        self._steerlens_handles = []

    def _steerlens_spec(self, req_id: str, extra: dict | None, device, dtype) -> Any:
        if not extra or KEY not in extra:
            return None
        got = self._steerlens_specs.get(req_id)
        if got is None:
            got = [{"op": e["op"], "coeff": float(e["coeff"]), "positions": e["positions"],
                    "dirs": {int(k): torch.tensor(v, dtype=torch.float32, device=device) for k, v in e["dirs"].items()}}
                   for e in extra[KEY]]
            self._steerlens_specs[req_id] = got
            while len(self._steerlens_specs) > _CACHE:
                self._steerlens_specs.popitem(last=False)
        return got

    def _steerlens_hook(self, layer: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            from vllm.forward_context import get_forward_context, is_forward_context_available

            if not is_forward_context_available():
                return None
            runner = self.model_runner
            n = runner.input_batch.num_reqs
            if n == 0:
                return None
            hidden, residual = (output if isinstance(output, tuple) else (output, None))[:2]
            specs = []
            for i, req_id in enumerate(runner.input_batch.req_ids[:n]):
                state = runner.requests.get(req_id)
                extra = state.sampling_params.extra_args if state is not None and state.sampling_params else None
                spec = self._steerlens_spec(req_id, extra, hidden.device, hidden.dtype)
                if spec and any(layer in e["dirs"] for e in spec):
                    specs.append((i, state, spec))
            if not specs:
                return None
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
            out = hidden.clone()
            for i, state, spec in specs:
                start, end = int(qsl[i]), int(qsl[i + 1])
                if end <= start:
                    continue
                first = int(seq_lens[i]) - (end - start)  # absolute position of the first row
                pos = torch.arange(first, first + end - start, device=hidden.device)
                n_prompt = int(state.num_prompt_tokens) if hasattr(state, "num_prompt_tokens") else len(state.prompt_token_ids)
                h = (out[start:end] + residual[start:end]) if residual is not None else out[start:end]
                h = h.float()
                for e in spec:
                    v = e["dirs"].get(layer)
                    if v is None:
                        continue
                    sel = {"all": pos >= 0, "prompt": pos < n_prompt, "generated": pos >= n_prompt}[e["positions"]]
                    if bool(sel.any()):
                        h = torch.where(sel[:, None], apply_entry(h, e["op"], v, e["coeff"]), h)
                h = h.to(hidden.dtype)
                out[start:end] = (h - residual[start:end]) if residual is not None else h
            return (out, residual, *output[2:]) if isinstance(output, tuple) else out

        return hook
