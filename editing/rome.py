"""ROME: rank-one model editing (Meng et al. 2022, https://arxiv.org/abs/2202.05262) with the
r-ROME fix (Gupta et al. 2024, https://arxiv.org/abs/2403.07175), plus an erasure mode.

One edit = a key k* (what the MLP at ``layer`` sees at the subject's last token), a value v*
(what it should output there so the model says the new object), and the closed-form rank-one
update of the down-projection W that maps k* to v* while disturbing other keys least under the
key second moment C. Every edit returns an ``EditHandle`` that reverts it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from jaxtyping import Float

from editing import prompts, sites
from editing.covariance import KeyStatistics, key_statistics
from steerlens.forward import final_hidden, logits_at, run_to
from steerlens.steps import exclusive
from steerlens.tokens import encode, pad, pad_id

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Mode = Literal["rewrite", "erase"]


class Request(Protocol):
    """What an edit needs (``steerlens.data.EditRequest`` fits)."""

    prompt: str
    subject: str
    target_true: str
    target_new: str


@dataclass(frozen=True)
class RomeConfig:
    """Hyper-parameters, named after ROME's ``hparams`` where they have a counterpart.

    Defaults are sized for a CPU: ROME's GPT-2 XL settings use 10+ templates and 20 steps too."""

    n_prefixes: int = 20  # sampled prefixes averaged into the key (ROME: context templates)
    prefix_tokens: int = 8
    n_value_prefixes: int = 5  # of those, how many the value is optimised on (ROME: 5 templates)
    steps: int = 25  # v_num_grad_steps
    lr: float = 0.5  # v_lr (Adam), in units of the rms of the MLP output at the subject
    kl_factor: float = 0.0625  # kl_factor: KL on "{subject} is a" at the subject's last token
    weight_decay: float = 0.5  # v_weight_decay: ‖δ‖ / ‖v₀‖²
    clamp_norm_factor: float = 4.0  # clamp_norm_factor: ‖δ‖ ≤ 4‖v₀‖
    early_stop: float = 0.35  # stop once the mean target NLL is below this (p(new) ≈ 0.70). ROME
    # stops its total loss at 0.05; here the NLL alone (ROME's weight-decay term is not scale-free
    # and alone exceeds 0.05 on Gemma's small MLP outputs), and higher: pushing on grows δ and with
    # it the spill onto neighbours whose keys resemble k*. Gemma 3 270M, layer 2, 10 test facts,
    # prefix seeds 0-3: neighbourhood 0.87-0.90 at 0.35, 0.80-0.83 at 0.2, 0.73 at 0.05; 10 other
    # facts: 0.97 vs 0.87; efficacy and paraphrase the same (benchmarks/README.md)
    erase_top_k: int = 10  # erasure: push the true object out of this many top tokens ...
    erase_margin: int = 2  # ... times this margin, on every optimisation prompt
    cov_reg: float = 1e-3  # ridge on C, relative to its mean eigenvalue
    n_tokens: int | None = None  # covariance token budget (None: 8k sampled, 20k from a corpus)
    seed: int = 0


@dataclass(frozen=True)
class EditResult:
    """What an edit computed (float32, CPU) and how long each part took."""

    layer: int
    mode: Mode
    k_star: torch.Tensor
    v_star: torch.Tensor
    delta: torch.Tensor  # δ optimised at the MLP output
    loss: list[float]
    seconds: dict[str, float]


def rank_one_update(
    W: Float[torch.Tensor, "d_out d_in"],
    C_inv: Float[torch.Tensor, "d_in d_in"],
    k_star: Float[torch.Tensor, " d_in"],
    v_star: Float[torch.Tensor, " d_out"],
) -> Float[torch.Tensor, "d_out d_in"]:
    """ΔW of ROME eq. 2: Ŵ = W + Λ (C⁻¹k*)ᵀ with Λ = (v* − W k*) / ((C⁻¹k*)ᵀ k*).

    r-ROME (Gupta et al. 2024): the same (prefix-averaged) k* is used in u = C⁻¹k* and in the
    residual v* − W k*, so Ŵ k* = v* exactly and the prompt and its prefixed variants agree.
    Among all W' with W' k* = v*, this one minimises ‖(W' − W) K‖ for keys K with second moment C.
    Computed in float64.
    """
    W64, C64 = W.double(), C_inv.double()
    k, v = k_star.double(), v_star.double()
    u = C64 @ k
    denom = u @ k
    if not torch.isfinite(denom) or denom <= 0:
        raise ValueError("(C⁻¹k*)ᵀk* is not positive: C_inv is not positive definite")
    lam = (v - W64 @ k) / denom
    return torch.outer(lam, u)


#: attribute of an edited weight: S, the sum of the ΔW of its edits not reverted yet (float32, stored
#: layout), so ``W − S`` is the weight without them; edits and reverts keep ``W − S``, other changes do not
_LIVE = "_steerlens_rome_live"
#: attribute of an edited weight: how many of its edits are not reverted yet (at 0 both attributes go,
#: so a reverted edit of a large weight, e.g. an embedding, leaves no zero-filled copy behind)
_NLIVE = "_steerlens_rome_nlive"


@torch.no_grad()
def set_weight(weight: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write ``new`` (cast to the weight's dtype) into ``weight`` in place and add the ΔW that landed
    to its live sum (``_LIVE``); return ``(before, after, applied)`` for an ``EditHandle``. The caller
    holds ``steerlens.steps.exclusive``. Every weight edit of ``editing`` goes through here. ``new`` is
    taken over (kept as ``after`` when it has the weight's dtype), not copied."""
    before = weight.detach().clone()
    after = new.detach().to(weight.dtype)
    weight.copy_(after)
    applied = after.float() - before.float()  # the exact ΔW that landed (after rounding to the weight's dtype)
    live = getattr(weight, _LIVE, None)
    setattr(weight, _LIVE, applied if live is None else live + applied)  # never changed in place: sharing is safe
    setattr(weight, _NLIVE, getattr(weight, _NLIVE, 0) + 1)
    return before, after, applied


@dataclass(eq=False)
class EditHandle:
    """Reverts one weight edit. ``revert()`` restores the weight bit-exactly when no later edit
    touched the same weight (it copies the saved original back); otherwise it subtracts this
    edit's own ΔW, which restores the original within float rounding in any order. It refuses
    (``ValueError``) a second revert, and a revert after this edit's update left the weight
    some other way (e.g. original weights copied back), which would subtract it from clean weights."""

    model: Any = field(repr=False)
    layer: int
    result: EditResult | None = field(repr=False, default=None)
    _before: torch.Tensor | None = field(repr=False, default=None)
    _after: torch.Tensor | None = field(repr=False, default=None)
    _delta: torch.Tensor | None = field(repr=False, default=None)  # in the stored layout, float32
    reverted: bool = False
    _mark: float | None = field(repr=False, default=None)  # _along(weight) right after the edit

    @property
    def weight(self) -> torch.nn.Parameter:
        return sites.down_proj(self.model, self.layer)[0]

    def _along(self, w: torch.Tensor) -> float | None:
        """⟨W − S, ΔŴ⟩: the weight without the live edits, projected on this edit's unit ΔW; edits
        and reverts leave it as it is (to float rounding), removing this ΔW another way shifts it by ‖ΔW‖."""
        live = getattr(w, _LIVE, None)
        if live is None:
            return None
        d = self._delta.flatten()  # dot products: no weight-sized temporaries (an embedding is 10⁸ floats)
        along = torch.dot(w.detach().flatten().float(), d) - torch.dot(live.flatten(), d)
        return float(along / d.norm().clamp_min(1e-30))

    def _name(self) -> str:
        """The weight this edit changed, as error messages name it."""
        return f"layer {self.layer} down-projection"

    def _check_revertible(self) -> None:
        """Raise ``ValueError`` when ``revert()`` would refuse (see the class docstring); change nothing."""
        if self.reverted:
            raise ValueError(f"this edit ({self._name()}) was already reverted; a second revert would "
                             "subtract its update from weights that no longer hold it")
        now = self._along(self.weight)
        if now is None or abs(now - self._mark) > 0.5 * float(self._delta.norm()):
            raise ValueError(
                f"this edit's update is no longer in the {self._name()} weight: the weight "
                "was restored or changed outside its EditHandles since the edit, so reverting would subtract "
                "the update from weights that lack it. Nothing was changed; reload the model to get its "
                "original weights.")

    @torch.no_grad()
    def _undo(self) -> None:
        """Take the ΔW out (the caller checked ``_check_revertible`` and holds ``exclusive``)."""
        w = self.weight
        if torch.equal(w, self._after):
            w.copy_(self._before)
        else:  # a later edit changed this weight: take out our own ΔW only
            w.copy_((w.float() - self._delta).to(w.dtype))
        n_live = getattr(w, _NLIVE, 1) - 1
        if n_live > 0:
            setattr(w, _LIVE, getattr(w, _LIVE) - self._delta)
            setattr(w, _NLIVE, n_live)
        else:  # no edit of this weight is live any more
            for name in (_LIVE, _NLIVE):
                if hasattr(w, name):
                    delattr(w, name)
        self.reverted = True

    @torch.no_grad()
    def revert(self) -> None:
        """Take this edit's ΔW out of the weight (see the class docstring for when it refuses)."""
        self._check_revertible()
        with exclusive(self.model, "a ROME revert"):  # weights change for every caller
            self._undo()

    def __enter__(self) -> "EditHandle":
        return self

    def __exit__(self, *exc) -> None:
        if not self.reverted:
            self.revert()


def check_context(model: "TransformerBridge", what: str, n: int, added: int = 0, added_what: str = "") -> None:
    """Raise ``ValueError`` when ``what`` (``n`` tokens) plus ``added`` tokens (of ``added_what``)
    do not fit the model's context ``model.cfg.n_ctx``."""
    n_ctx = int(model.cfg.n_ctx)
    if n + added > n_ctx:
        plus = f" and {added_what} adds {added}" if added else ""
        raise ValueError(f"{what} is {n} tokens long{plus}: {n + added} tokens do not fit the model's context "
                         f"of {n_ctx} tokens (model.cfg.n_ctx); shorten it")


def _check_request(model, request: Request, mode: Mode, prefixes: Sequence[str] = ()) -> tuple[list[int], list[int] | None]:
    """Validate ``request`` for ``mode`` (its prompt, with the longest of ``prefixes`` and the
    target, must fit the context) and return the token ids of (target_true, target_new)."""
    for name in ("prompt", "subject"):
        if not isinstance(getattr(request, name, None), str) or not getattr(request, name):
            raise ValueError(f"request.{name} must be a non-empty string")
    if mode not in ("rewrite", "erase"):
        raise ValueError(f"mode must be 'rewrite' or 'erase', got {mode!r}")
    prompts.subject_last(model, request.prompt, request.subject)  # raises if absent
    true_ids = prompts.encode_target(model, request.target_true, "target_true")
    new_ids = prompts.encode_target(model, request.target_new, "target_new") if mode == "rewrite" else None
    if new_ids is not None and new_ids == true_ids:
        raise ValueError(f"target_new {request.target_new!r} equals target_true")
    n = max(len(encode(model, prompts.with_prefix(p, request.prompt)[0])) for p in ["", *prefixes])
    tgt, tgt_name = (new_ids, "target_new") if mode == "rewrite" else (true_ids, "target_true")
    check_context(model, "request.prompt" + (" with its longest prefix" if prefixes else ""), n, len(tgt), tgt_name)
    return true_ids, new_ids


def compute_key(
    model: "TransformerBridge", layer: int, prompt: str, subject: str, prefixes: Sequence[str]
) -> Float[torch.Tensor, " d_mlp"]:
    """k*: the mean of the down-projection's input at the subject's last token over ``prompt``
    and each ``"{prefix}. {prompt}"`` (ROME §3.1, eq. 3)."""
    texts = [prompts.with_prefix(p, prompt) for p in ["", *prefixes]]
    rows = [encode(model, t) for t, _ in texts]
    idx = [prompts.subject_last(model, t, subject, after=a) for t, a in texts]
    ids, mask = pad(rows, pad_id(model))
    with torch.no_grad():
        k = run_to(model, ids, mask, sites.key_hook(layer))
    return k[torch.arange(len(rows)), torch.tensor(idx)].float().mean(0).cpu()


def compute_value(
    model: "TransformerBridge",
    layer: int,
    request: Request,
    k_star: torch.Tensor,
    prefixes: Sequence[str],
    *,
    mode: Mode = "rewrite",
    config: RomeConfig = RomeConfig(),
    u: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """v* = W k* + δ, with δ added to the raw down-projection output at the subject's last token
    optimised (Adam, parameters frozen) so the model predicts the new object after the prompt and
    its prefixed variants (ROME §3.1, eq. 4), plus ROME's KL term on "{subject} is a", its
    weight decay, and its norm clamp ‖δ‖ ≤ clamp_norm_factor·‖v₀‖ (v₀: the MLP output at the
    subject on the plain prompt). Erasure minimises the true object's likelihood instead, until
    its first token leaves the top ``erase_top_k·erase_margin`` on every prompt.
    With ``u = C⁻¹k*`` given, δ is scaled at each prompt by (uᵀkᵢ)/(uᵀk*), the factor the
    rank-one update will apply there, so the optimised loss is the edited model's loss.
    Returns ``(v_star, delta, losses)``.
    """
    true_ids, new_ids = _check_request(model, request, mode, prefixes)
    tgt = new_ids if mode == "rewrite" else true_ids
    dev = _device(model)
    texts = [prompts.with_prefix(p, request.prompt) for p in ["", *prefixes]]
    kl_text = f"{request.subject} is a"
    rows, lookup, tpos = [], [], []
    for text, a in texts:
        ids = encode(model, text)
        lookup.append(prompts.subject_last(model, text, request.subject, after=a))
        tpos.append(len(ids) - 1)
        rows.append(ids + tgt[:-1])
    rows.append(encode(model, kl_text))
    lookup.append(prompts.subject_last(model, kl_text, request.subject))
    ids, mask = pad(rows, pad_id(model))
    n_rw = len(texts)
    lookup_t = torch.tensor(lookup, device=dev)
    rows_t = torch.arange(len(rows), device=dev)
    # gather positions for the target tokens: [n_rw, len(tgt)]
    pos = torch.tensor([[p + j for j in range(len(tgt))] for p in tpos], device=dev)
    tgt_t = torch.tensor(tgt, device=dev)

    with torch.no_grad():
        raw0 = run_to(model, ids[:1], mask[:1], sites.out_hook(layer))[0, lookup[0]].float()
        # The rank-one update adds Λ·(uᵀk)/(uᵀk*) at a key k (u = C⁻¹k*), not Λ: scale δ per
        # prompt by that factor so the optimisation sees exactly what the edited weight will do
        # (the plain prompt's key can differ much from the prefix average, e.g. right after BOS).
        if u is None:
            scale_rows = torch.ones(len(rows), device=dev)
        else:
            keys = run_to(model, ids, mask, sites.key_hook(layer))[rows_t, lookup_t].float().cpu()
            uu = u.float()
            scale_rows = ((keys @ uu) / (k_star.float() @ uu)).to(dev)
        h0 = final_hidden(model, ids[-1:], mask[-1:])
        kl_ref = logits_at(model, h0[0, lookup[-1]]).log_softmax(-1)
    scale = raw0.norm() / raw0.numel() ** 0.5  # rms of v₀: makes lr scale-free across models
    max_norm = config.clamp_norm_factor * raw0.norm()
    delta = torch.zeros_like(raw0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.lr * float(scale))

    def add_delta(x, hook):
        x = x.clone()
        x[rows_t, lookup_t] = x[rows_t, lookup_t] + (scale_rows[:, None] * delta).to(x.dtype)
        return x

    losses: list[float] = []
    erase_k = config.erase_top_k * config.erase_margin
    for _ in range(config.steps):
        opt.zero_grad()
        hidden = final_hidden(model, ids, mask, [(sites.out_hook(layer), add_delta)])
        logp = logits_at(model, hidden[torch.arange(n_rw, device=dev)[:, None], pos]).log_softmax(-1)
        tok_lp = logp.gather(-1, tgt_t.expand(n_rw, -1)[..., None])[..., 0]  # [n_rw, len(tgt)]
        if mode == "rewrite":
            main = -tok_lp.mean(1).mean()
            done = float(main.detach()) < config.early_stop
        else:
            first = logp[:, 0]
            rank = (first > first.gather(-1, tgt_t[:1].expand(n_rw)[:, None])).sum(-1)
            active = rank < erase_k
            # minimise the likelihood of the true object where it is still near the top
            main = (tok_lp.mean(1) * active).sum() / active.sum().clamp(min=1)
            done = not bool(active.any())
        kl_lp = logits_at(model, hidden[-1, lookup[-1]]).log_softmax(-1)
        kl = torch.nn.functional.kl_div(kl_lp, kl_ref, log_target=True, reduction="sum")
        decay = delta.norm() / raw0.norm() ** 2
        loss = main + config.kl_factor * kl + config.weight_decay * decay
        losses.append(float(loss.detach()))
        if done or not torch.isfinite(loss):
            break
        loss.backward()
        opt.step()
        with torch.no_grad():  # ROME's clamp: keep ‖δ‖ ≤ clamp_norm_factor·‖v₀‖
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    delta = delta.detach().float().cpu()
    if not torch.isfinite(delta).all():
        raise RuntimeError("the value optimisation diverged (non-finite δ); no weight was changed")
    v_star = sites.w_out(model, layer).cpu() @ k_star.float() + delta
    return v_star, delta, losses


def edit(
    model: "TransformerBridge",
    request: Request,
    *,
    layer: int | None = None,
    mode: Mode = "rewrite",
    stats: KeyStatistics | None = None,
    corpus: str | os.PathLike | Sequence[str] | None = None,
    config: RomeConfig = RomeConfig(),
    progress: bool = True,
) -> EditHandle:
    """Apply one ROME edit in place and return its ``EditHandle``.

    ``mode="rewrite"`` makes ``request.prompt`` complete with ``request.target_new``;
    ``mode="erase"`` makes the model forget ``request.target_true`` instead. ``stats``: key
    statistics of ``layer`` (else computed from ``corpus`` or model-sampled text and cached).
    Input is validated and everything is computed before the weight changes, so a failed edit
    leaves the model as it was.
    """
    layer = sites.default_layer(model) if layer is None else sites.check_layer(model, layer)
    _check_request(model, request, mode)  # before sampling prefixes or statistics
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    pre = prompts.prefixes(model, config.n_prefixes, config.prefix_tokens, config.seed)
    _check_request(model, request, mode, pre)
    seconds["prefixes"] = time.perf_counter() - t
    t = time.perf_counter()
    if stats is None:
        stats = key_statistics(model, layer, corpus=corpus, n_tokens=config.n_tokens, seed=config.seed, progress=progress)
    if stats.mom2.shape[0] != int(model.cfg.d_mlp) or stats.info.get("layer", layer) != layer:
        raise ValueError(f"stats are for layer {stats.info.get('layer')} / width {stats.mom2.shape[0]}, "
                         f"not layer {layer} / d_mlp {model.cfg.d_mlp}")
    c_inv = _inverse(stats, config.cov_reg)
    seconds["stats"] = time.perf_counter() - t

    t = time.perf_counter()
    k_star = compute_key(model, layer, request.prompt, request.subject, pre)
    seconds["key"] = time.perf_counter() - t
    t = time.perf_counter()
    v_star, delta, losses = compute_value(model, layer, request, k_star, pre[: config.n_value_prefixes],
                                          mode=mode, config=config, u=(c_inv @ k_star.double()).float())
    seconds["value"] = time.perf_counter() - t
    t = time.perf_counter()
    weight, transposed = sites.down_proj(model, layer)
    dW = rank_one_update(sites.w_out(model, layer).cpu(), c_inv, k_star, v_star).float()
    if not torch.isfinite(dW).all():
        raise RuntimeError("the rank-one update is not finite; no weight was changed")
    d_stored = (dW.T if transposed else dW).contiguous().to(weight.device)
    with torch.no_grad(), exclusive(model, "a ROME edit"):  # weights change for every caller
        before, after, applied = set_weight(weight, weight.float() + d_stored)  # float32 math, cast back
    seconds["update"] = time.perf_counter() - t
    result = EditResult(layer, mode, k_star, v_star, delta, losses, seconds)
    handle = EditHandle(model, layer, result, before, after, applied)
    handle._mark = handle._along(weight)
    return handle


def erase(model: "TransformerBridge", request: Request, **kwargs) -> EditHandle:
    """``edit(..., mode="erase")``: make the model forget ``request.target_true``."""
    return edit(model, request, mode="erase", **kwargs)


@contextmanager
def edited(model: "TransformerBridge", request: Request, **kwargs) -> Iterator[EditHandle]:
    """Apply an edit for the duration of a ``with`` block; reverted on exit, even on errors."""
    handle = edit(model, request, **kwargs)
    try:
        yield handle
    finally:
        if not handle.reverted:
            handle.revert()


_INV: dict[tuple, tuple[KeyStatistics, torch.Tensor]] = {}


def _inverse(stats: KeyStatistics, reg: float) -> torch.Tensor:
    key = (id(stats), reg)
    if key not in _INV or _INV[key][0] is not stats:
        if len(_INV) > 8:
            _INV.clear()
        _INV[key] = (stats, stats.inverse(reg))
    return _INV[key][1]


def as_request(**fields) -> Any:
    """A ``steerlens.data.EditRequest`` from keyword fields (missing lists default to empty)."""
    from steerlens.data import EditRequest

    base = dict(id="", relation="", target_new="", paraphrases=(), neighbourhood=())
    base.update(fields)
    base["paraphrases"] = tuple(base["paraphrases"])
    base["neighbourhood"] = tuple(base["neighbourhood"])
    return EditRequest(**base)


__all__ = ["EditHandle", "EditResult", "RomeConfig", "as_request", "compute_key", "compute_value",
           "edit", "edited", "erase", "rank_one_update"]


def _device(model) -> torch.device:
    return next(model.parameters()).device
