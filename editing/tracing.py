"""Causal tracing (ROME §2, Meng et al. 2022): corrupt the subject's token embeddings with
Gaussian noise, restore one clean hidden state at a time, and measure how much of the true
object's probability comes back (the indirect effect of that state).

transformer-lens' ``patching.generic_activation_patch`` runs one forward pass per patched index
and corrupts by swapping tokens; causal tracing corrupts embeddings with noise and averages noise
samples, so here every restoration is a row of one batch (restoration × noise sample), which is
what makes a full token × layer sweep affordable on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from editing import prompts
from editing.rome import check_context
from steerlens.forward import final_hidden, logits_at, run_to
from steerlens.tokens import encode

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Kind = Literal["resid", "mlp", "attn"]
_HOOKS = {"resid": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "attn": "blocks.{}.hook_attn_out"}
_LABELS = {"resid": "single restored layer (residual)", "mlp": "MLP", "attn": "attention"}


@dataclass(frozen=True)
class CausalTrace:
    """``scores[kind][t, L]``: P(target) with the subject corrupted and the state of ``kind`` at
    token ``t`` restored at layer ``L`` (for mlp/attn: at the ``window`` layers centred on L),
    averaged over ``samples`` noise draws. ``indirect_effect`` subtracts the corrupted baseline."""

    prompt: str
    subject: str
    target: str
    tokens: tuple[str, ...]
    subject_span: tuple[int, int]
    p_clean: float
    p_corrupt: float
    scores: dict[str, torch.Tensor]
    window: int
    samples: int
    noise_std: float
    seed: int

    def indirect_effect(self, kind: Kind) -> torch.Tensor:
        return self.scores[kind] - self.p_corrupt

    def last_subject_curve(self) -> dict[str, list[float]]:
        """Indirect effect per layer at the subject's last token, per kind."""
        t = self.subject_span[1] - 1
        return {k: self.indirect_effect(k)[t].tolist() for k in self.scores}

    def heatmap(self, kind: Kind):
        import plotly.graph_objects as go

        labels = [f"{i}: {tok!r}" + (" *" if self.subject_span[0] <= i < self.subject_span[1] else "")
                  for i, tok in enumerate(self.tokens)]
        fig = go.Figure(go.Heatmap(z=self.scores[kind].numpy(), x=list(range(self.scores[kind].shape[1])), y=labels,
                                   colorscale={"resid": "Purples", "mlp": "Greens", "attn": "Reds"}[kind],
                                   colorbar=dict(title=f"p({self.target.strip()})")))
        win = f", window {self.window}" if kind != "resid" else ""
        fig.update_layout(title=f"Restoring {_LABELS[kind]}{win}; clean p={self.p_clean:.3f}, corrupted p={self.p_corrupt:.3f}",
                          xaxis_title="layer", yaxis=dict(autorange="reversed"), height=120 + 28 * len(labels))
        return fig

    def curve(self):
        import plotly.graph_objects as go

        fig = go.Figure()
        for k, ys in self.last_subject_curve().items():
            fig.add_trace(go.Scatter(x=list(range(len(ys))), y=ys, mode="lines+markers", name=_LABELS[k]))
        fig.update_layout(title=f"Indirect effect at the last subject token ({self.tokens[self.subject_span[1] - 1]!r})",
                          xaxis_title="layer", yaxis_title="p(restored) − p(corrupted)")
        return fig

    def figures(self) -> list:
        return [self.heatmap(k) for k in self.scores] + [self.curve()]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "subject": self.subject, "target": self.target, "tokens": list(self.tokens),
                "subject_span": list(self.subject_span), "p_clean": self.p_clean, "p_corrupt": self.p_corrupt,
                "window": self.window, "samples": self.samples, "noise_std": self.noise_std, "seed": self.seed,
                "scores": {k: v.tolist() for k, v in self.scores.items()}}

    def save_html(self, path) -> Path:
        """Write the heatmaps and the curve as one self-contained page (``steerlens.report``) to the
        file ``path``, atomically; returns ``Path(path)``. (A trace is a single file, unlike the
        ``write_report(result, out)`` directories; the CLI writes its JSON next to it.)"""
        from steerlens.report import Page

        page = Page("causal trace", heading=f"Causal trace: {self.prompt} → {self.target}")
        for f in self.figures():
            page.figure(f)
        return page.write(path)


def default_window(model: "TransformerBridge") -> int:
    """ROME restores 10 of GPT-2 XL's 48 layers around each layer; the same fraction of the stack
    (Gemma 3 270M: 4 of 18)."""
    return max(1, round(model.cfg.n_layers * 10 / 48))


@torch.no_grad()
def embedding_std(model: "TransformerBridge", n: int = 2048, seed: int = 0) -> float:
    """Std of the token embeddings (as the blocks see them, e.g. with Gemma's √d scale) over a
    seeded sample of the vocabulary (ROME: over subject tokens of its dataset)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(model.cfg.d_vocab), (min(n, int(model.cfg.d_vocab)), 1), generator=g)
    emb = run_to(model, ids, torch.ones_like(ids), "hook_embed")
    return float(emb.float().std())


@torch.no_grad()
def causal_trace(
    model: "TransformerBridge",
    prompt: str,
    subject: str,
    *,
    target: str | None = None,
    kinds: Sequence[Kind] = ("resid", "mlp", "attn"),
    samples: int = 5,
    noise: float = 3.0,
    window: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> CausalTrace:
    """Trace where ``model`` recalls the object of ``prompt`` about ``subject``.

    ``target``: the object (first token scored; default: the model's top-1 next token).
    ``noise``: multiple of the embedding std (ROME: 3). ``window``: layers restored together
    for mlp/attn (default ``default_window``). Same ``seed``, same numbers.
    """
    from tqdm.auto import tqdm

    kinds = list(kinds)
    for k in kinds:
        if k not in _HOOKS:
            raise ValueError(f"kinds must be among {sorted(_HOOKS)}, got {k!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n_layers = int(model.cfg.n_layers)
    window = default_window(model) if window is None else int(window)
    if not 1 <= window <= n_layers:
        raise ValueError(f"window must be in 1..{n_layers}, got {window}")
    row = encode(model, prompt)
    check_context(model, "prompt", len(row))
    last = prompts.subject_last(model, prompt, subject)
    from steerlens.tokens import token_span

    s0, s1 = token_span(model, prompt, subject, occurrence=0)
    assert s1 == last + 1
    T = len(row)
    ids = torch.tensor([row])
    mask = torch.ones_like(ids)

    # clean run: the states to restore, and the target
    names = sorted({_HOOKS[k].format(L) for k in kinds for L in range(n_layers)})
    clean: dict[str, torch.Tensor] = {}

    def keeper(name):
        def keep(x, hook):
            clean[name] = x[0].clone()
            return x

        return keep

    hidden = final_hidden(model, ids, mask, [(n, keeper(n)) for n in names])
    probs = logits_at(model, hidden[0, -1]).softmax(-1)
    tgt = int(probs.argmax()) if target is None else prompts.encode_target(model, target, "target")[0]
    target_str = model.tokenizer.decode([tgt]) if target is None else target
    p_clean = float(probs[tgt])

    std = embedding_std(model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    noise_t = (noise * std * torch.randn(samples, s1 - s0, int(model.cfg.d_model), generator=g))
    dev = _device(model)

    def run(restore: list[tuple[int, list[str]]]) -> torch.Tensor:
        """One batch: each item restores ``names`` at token ``t``; × samples rows. Returns p per item."""
        n_rows = len(restore) * samples
        sample_of_row = torch.arange(n_rows) % samples

        def corrupt(x, hook):
            x = x.clone()
            x[:, s0:s1] = x[:, s0:s1] + noise_t[sample_of_row].to(x.device, x.dtype)
            return x

        per_name: dict[str, tuple[list[int], list[int]]] = {}
        for i, (t, layer_names) in enumerate(restore):
            for name in layer_names:
                r, tt = per_name.setdefault(name, ([], []))
                for s in range(samples):
                    r.append(i * samples + s)
                    tt.append(t)

        def restorer(name):
            r_idx, t_idx = (torch.tensor(v, device=dev) for v in per_name[name])

            def hook(x, hook):
                x = x.clone()
                x[r_idx, t_idx] = clean[name][t_idx].to(x.dtype)
                return x

            return hook

        hooks = [("hook_embed", corrupt)] + [(n, restorer(n)) for n in per_name]
        h = final_hidden(model, ids.expand(n_rows, -1), mask.expand(n_rows, -1), hooks)
        p = logits_at(model, h[:, -1]).softmax(-1)[:, tgt].cpu()
        return p.view(len(restore), samples).mean(1)

    p_corrupt = float(run([(0, [])])[0])
    scores: dict[str, torch.Tensor] = {}
    items_per_batch = max(1, batch_size // samples)
    total = sum(T * n_layers for _ in kinds)
    bar = tqdm(total=total, desc="causal trace", unit="state", disable=not progress)
    for kind in kinds:
        work = []
        for t in range(T):
            for L in range(n_layers):
                if kind == "resid":
                    layers = [L]
                else:
                    layers = list(range(max(0, L - window // 2), min(n_layers, L - (-window // 2))))
                work.append((t, [_HOOKS[kind].format(x) for x in layers]))
        out = []
        for b in range(0, len(work), items_per_batch):
            out.append(run(work[b : b + items_per_batch]))
            bar.update(len(work[b : b + items_per_batch]))
        scores[kind] = torch.cat(out).view(T, n_layers)
    bar.close()
    tokens = tuple(model.tokenizer.decode([i]) for i in row)
    return CausalTrace(prompt, subject, target_str, tokens, (s0, s1), p_clean, p_corrupt, scores,
                       window, samples, std, seed)


def _device(model) -> torch.device:
    return next(model.parameters()).device
