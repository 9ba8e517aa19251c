"""``ProbeMonitor``: score every token with one or more probes while the model runs or generates."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float

from probes.estimators import _LinearProbe
from probes.io import check_probe_model

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ProbeSpec = _LinearProbe | tuple[str, _LinearProbe]


class ProbeMonitor:
    """Context manager that scores activations with probes on every forward pass of ``model``.

    ``probes``: ``{name: probe}`` for probes that know their hook (from ``sweep_layers`` or
    ``load_probe``, via ``probe.meta_["hook"]``), ``{name: (hook, probe)}``, or a sequence of
    such probes (named ``"<method>@<layer>"``). ``output``: ``"proba"`` (P(``classes_[1]``)) or
    ``"logit"`` (``decision_function``). ``callback(step, {name: tensor[batch]})`` is called after
    each forward pass with the scores of its last position: the live view during ``generate``.

    Scores follow the positions the model processes. A run starts with a forward pass over a
    prompt; with the KV cache on, each later ``generate`` step feeds one token and extends the
    run. After ``model.generate(...)`` inside the ``with`` block:

    - ``scores[name]``: ``[batch, n_generated]``, one score per generated token: the score at
      the position whose output produced that token (the last prompt token for the first one,
      then each generated token but the last, which the model never reads back);
    - ``prompt_scores[name]``: ``[batch, prompt_len]`` (left padding included for a batch);
    - ``token_scores[name]``: ``[batch, positions]``, every position processed, in order.

    After a plain forward pass ``token_scores`` holds every token's score (``scores``: the last).
    ``runs`` keeps every run of the block. Without the KV cache, each generation step is a
    separate run over the whole sequence, so the last run holds every position.
    Hooks are added on entry and removed on exit, also when the block raises.
    """

    def __init__(
        self,
        model: "TransformerBridge",
        probes: Mapping[str, ProbeSpec] | Sequence[_LinearProbe] | _LinearProbe,
        *,
        output: Literal["proba", "logit"] = "proba",
        callback: Callable[[int, dict[str, torch.Tensor]], Any] | None = None,
        force: bool = False,
    ):
        if output not in ("proba", "logit"):
            raise ValueError(f"output must be 'proba' or 'logit', got {output!r}")
        self.model = model
        self.output = output
        self.callback = callback
        self._specs = _normalise(model, probes, force)
        self.runs: list[dict[str, list[torch.Tensor]]] = []
        self._step = 0
        self._pending: set[str] = set()
        self._ctx: Any = None

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "ProbeMonitor":
        from steerlens.hooks import hook_depth
        from steerlens.steps import intervene

        if self._ctx is not None:
            raise RuntimeError("this ProbeMonitor is already active")
        by_hook: dict[str, list[str]] = {}
        for name, (hook, _) in self._specs.items():
            by_hook.setdefault(hook, []).append(name)
        device = next(self.model.parameters()).device
        order = sorted(by_hook, key=lambda h: hook_depth(self.model, h))
        hooks = {}
        for hook in order:
            names = by_hook[hook]
            W = torch.stack([torch.from_numpy(self._specs[n][1].coef_[0]) for n in names], 1).to(device)  # [d, k]
            b = torch.tensor([float(self._specs[n][1].intercept_[0]) for n in names], device=device)
            hooks[hook] = self._make_hook(hook, names, W, b, first=hook == order[0])
        ctx = intervene(self.model, hooks)
        ctx.__enter__()
        self._ctx = ctx
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.__exit__(exc_type, exc, tb)
        return False

    def reset(self) -> None:
        """Forget recorded runs (the hooks stay while the block is active)."""
        self.runs, self._step, self._pending = [], 0, set()

    # -- results ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._specs)

    @property
    def token_scores(self) -> dict[str, Float[torch.Tensor, "batch pos"]]:
        run = self._last()
        return {n: torch.cat(run[n], dim=1) for n in self._specs}

    @property
    def prompt_scores(self) -> dict[str, Float[torch.Tensor, "batch prompt"]]:
        run = self._last()
        return {n: run[n][0] for n in self._specs}

    @property
    def scores(self) -> dict[str, Float[torch.Tensor, "batch generated"]]:
        run = self._last()
        return {n: torch.cat([run[n][0][:, -1:], *run[n][1:]], dim=1) for n in self._specs}

    def _last(self) -> dict[str, list[torch.Tensor]]:
        if not self.runs:
            raise RuntimeError("no scores yet: run the model (forward or generate) inside the `with` block")
        return self.runs[-1]

    # -- hooks -------------------------------------------------------------------------------------
    def _make_hook(self, hook: str, names: list[str], W: torch.Tensor, b: torch.Tensor, first: bool):
        width = W.shape[0]

        def fn(x: torch.Tensor, step: Any) -> None:
            flat = x.detach().reshape(*x.shape[:2], -1)  # [batch, pos, d] (per-head hooks flattened, as capture does)
            if flat.shape[-1] != width:
                raise ValueError(f"probes at {hook!r} expect width {width}, the activations there have {flat.shape[-1]}")
            with torch.no_grad():
                z = flat.to(W.dtype) @ W + b  # [batch, pos, k]
                if self.output == "proba":
                    z = torch.sigmoid(z)
                z = z.to("cpu")
            if first:
                self._open_or_extend(step, z.shape[0])
            run = self.runs[-1]
            for i, n in enumerate(names):
                run[n].append(z[..., i])
            self._pending -= set(names)
            if not self._pending:  # every probe has scored this forward pass
                if self.callback is not None:
                    self.callback(self._step, {n: run[n][-1][:, -1] for n in self._specs})
                self._step += 1
            return None

        return fn

    def _open_or_extend(self, step: Any, batch: int) -> None:
        """A forward call continuing a KV-cached sequence extends the last run; anything else opens one."""
        run = self.runs[-1] if self.runs else None
        any_name = next(iter(self._specs))
        self._pending = set(self._specs)
        cached = step is not None and step.past > 0
        if run is not None and cached and run[any_name] and run[any_name][0].shape[0] == batch:
            return
        self.runs.append({n: [] for n in self._specs})


def _normalise(model, probes, force: bool) -> dict[str, tuple[str, _LinearProbe]]:
    from steerlens.hooks import hook_layer

    if isinstance(probes, _LinearProbe):
        probes = [probes]
    if isinstance(probes, Mapping):
        items = list(probes.items())
    elif isinstance(probes, Sequence) and not isinstance(probes, str):
        items = []
        for p in probes:
            if not isinstance(p, _LinearProbe):
                raise TypeError(f"probes must be steerlens probes, got {type(p).__name__}")
            meta = getattr(p, "meta_", {}) or {}
            items.append((f"{meta.get('method', type(p).__name__)}@{meta.get('layer', hook_layer(meta.get('hook', '')) )}", p))
    else:
        raise TypeError(f"probes must be a probe, a sequence of probes or a mapping name -> probe, got {type(probes).__name__}")
    if not items:
        raise ValueError("probes is empty: pass at least one probe")
    out: dict[str, tuple[str, _LinearProbe]] = {}
    for name, spec in items:
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise ValueError(f"probe {name!r}: expected (hook, probe), got a tuple of {len(spec)}")
            hook, probe = spec
        else:
            probe = spec
            hook = (getattr(probe, "meta_", None) or {}).get("hook")
            if hook is None:
                raise ValueError(
                    f"probe {name!r} does not know its hook: pass {{{name!r}: (hook_name, probe)}} "
                    "or use a probe from sweep_layers / load_probe"
                )
        if name in out:
            raise ValueError(f"two probes are named {name!r}")
        if not isinstance(probe, _LinearProbe):
            raise TypeError(f"probe {name!r} is a {type(probe).__name__}, not a steerlens probe")
        out[str(name)] = (check_probe_model(probe, model, hook, force=force), probe)
    return out
