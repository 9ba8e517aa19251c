"""Internal helpers shared by tracing, ROME and evaluation: token layouts, the down-projection
weight, forward passes that stop before the unembedding, and a KV-cached sampler."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from steerlens.hooks import resolve_layers
from steerlens.models import cache_dir, fingerprint, model_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Hook = tuple[str, Callable[..., Any]]


def key_hook(layer: int) -> str:
    """ROME's key k: the input of the down-projection (the MLP's hidden activation)."""
    return f"blocks.{layer}.mlp.hook_post"


def out_hook(layer: int) -> str:
    """The raw down-projection output, where a rank-one update of W_out lands. On Gemma this is
    *before* the post-MLP RMSNorm (``hook_mlp_out`` sits after it); on GPT-2 they coincide."""
    return f"blocks.{layer}.mlp.hook_out"


def check_layer(model: "TransformerBridge", layer: int) -> int:
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"layer must be an int, got {layer!r}")
    return resolve_layers(model, layer)[0]


#: edit layers measured on the shipped ``facts`` (benchmarks/README.md, "Layer choice"): within the
#: causal trace's MLP peak (Gemma 3 270M: layers 2-4), the earliest layer, where the keys of other
#: subjects of the same relation overlap least with the edited one's (C⁻¹-weighted)
MEASURED_LAYERS = {"gemma-3-270m": 2}


def default_layer(model: "TransformerBridge") -> int:
    """The measured layer for a model in ``MEASURED_LAYERS``, else a quarter of the way up the
    stack (ROME used 17 of 48 on GPT-2 XL): early-middle MLPs carry the subject's attributes at its
    last token (ROME §2). Trace a few facts (``editing.causal_trace``) to choose for a new model."""
    known = MEASURED_LAYERS.get(model_name(model))
    if known is not None and known < int(model.cfg.n_layers):
        return known
    return int(round(0.25 * model.cfg.n_layers - 0.01))


def down_proj(model: "TransformerBridge", layer: int) -> tuple[torch.nn.Parameter, bool]:
    """The HF down-projection weight of block ``layer`` (edited in place) and whether it is stored
    transposed (GPT-2's Conv1D keeps ``[d_mlp, d_model]``; Linear keeps ``[d_model, d_mlp]``)."""
    module = model.blocks[layer].mlp.out.original_component
    weight = module.weight
    if isinstance(module, torch.nn.Linear):
        return weight, False
    if type(module).__name__ == "Conv1D":
        return weight, True
    raise TypeError(f"block {layer}'s down-projection is a {type(module).__name__}; expected Linear or Conv1D")


def w_out(model: "TransformerBridge", layer: int) -> torch.Tensor:
    """W as ROME writes it, ``[d_model, d_mlp]`` (``v = W k``), float32 copy."""
    weight, transposed = down_proj(model, layer)
    w = weight.detach().float()
    return w.T.contiguous() if transposed else w.clone()


def device_of(model: "TransformerBridge") -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: "TransformerBridge") -> torch.dtype:
    return next(model.parameters()).dtype


def encode(model: "TransformerBridge", text: str) -> list[int]:
    """Token ids of ``text`` with BOS, as ``steerlens.tokens.tokenize`` makes them."""
    return list(model.tokenizer(text)["input_ids"])


def encode_target(model: "TransformerBridge", target: str, name: str = "target") -> list[int]:
    """Token ids of a completion (no BOS). A target that tokenises to nothing is an error."""
    if not isinstance(target, str):
        raise TypeError(f"{name} must be a str, got {type(target).__name__}")
    ids = list(model.tokenizer(target, add_special_tokens=False)["input_ids"]) if target else []
    if not ids:
        raise ValueError(f"{name} {target!r} tokenises to nothing: pass a non-empty completion such as ' Paris'")
    return ids


def subject_last(model: "TransformerBridge", text: str, subject: str, after: int = 0) -> int:
    """Token index (BOS included) of the last token of the first occurrence of ``subject`` that
    starts at or after character ``after`` of ``text``."""
    from steerlens.tokens import token_span

    if not subject:
        raise ValueError("subject is empty")
    if text.find(subject, after) < 0:
        raise ValueError(f"subject {subject!r} does not occur in the prompt {text[after:]!r}")
    before = sum(1 for i in range(after) if text.startswith(subject, i))
    return token_span(model, text, subject, occurrence=before)[1] - 1


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows: ``(ids, mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_id(model: "TransformerBridge") -> int:
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _stop(x: torch.Tensor, hook: Any) -> torch.Tensor:
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(x)


def final_hidden(
    model: "TransformerBridge", ids: torch.Tensor, mask: torch.Tensor, fwd_hooks: Sequence[Hook] = ()
) -> torch.Tensor:
    """The normalised final residual ``[batch, pos, d_model]``: the forward pass stops at
    ``ln_final`` so the (262k-wide on Gemma) unembedding runs only where ``logits_at`` asks."""
    dev = device_of(model)
    with model.hooks(fwd_hooks=[*fwd_hooks, ("ln_final.hook_out", _stop)]):
        return model(ids.to(dev), attention_mask=mask.to(dev))


def logits_at(model: "TransformerBridge", hidden: torch.Tensor) -> torch.Tensor:
    """Logits (float32) of selected final-residual rows ``[..., d_model]``."""
    return model.unembed(hidden).float()


def run_until(
    model: "TransformerBridge", ids: torch.Tensor, mask: torch.Tensor, name: str, fwd_hooks: Sequence[Hook] = ()
) -> torch.Tensor:
    """The activation at hook ``name`` (the forward pass stops there)."""
    got: dict[str, torch.Tensor] = {}

    def grab(x, hook):
        got["x"] = x
        return _stop(x, hook)

    dev = device_of(model)
    with model.hooks(fwd_hooks=[*fwd_hooks, (name, grab)]):
        model(ids.to(dev), attention_mask=mask.to(dev))
    return got["x"]


#: bump when ``sample`` draws differently, so nothing cached from older samples (prefixes, key
#: statistics of model-sampled text) is reused
SAMPLER_VERSION = 2


def categorical(probs: torch.Tensor, generator: torch.Generator, block: int = 512) -> torch.Tensor:
    """One draw per row of ``probs`` ``[n, V]`` -> ``[n, 1]``, in two exact stages: a block of
    ``block`` columns by its mass, then a column within it. ``torch.multinomial`` alone is serial
    per row: on Gemma's 262k vocabulary it took longer than the forward pass (1.5 s vs 1.2 s for
    256 rows on 2 CPU cores; this takes 0.1 s)."""
    n, V = probs.shape
    if V % block:
        probs = torch.nn.functional.pad(probs, (0, block - V % block))
    p = probs.view(n, -1, block)
    b = torch.multinomial(p.sum(-1), 1, generator=generator)
    j = torch.multinomial(p[torch.arange(n)[:, None], b].squeeze(1), 1, generator=generator)
    return b * block + j


@torch.no_grad()
def sample(
    model: "TransformerBridge",
    prompts: Sequence[str] | None,
    *,
    n: int,
    max_new_tokens: int,
    seed: int,
    top_k: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Sample continuations (decoded, prompt excluded) with a KV cache, seeded. ``prompts=None``
    samples ``n`` texts from BOS alone. Runs the HF model under the bridge (whose hooks fire)."""
    hf = model.original_model
    dev = device_of(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    prompts = [model.tokenizer.bos_token or ""] * n if prompts is None else list(prompts)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rows = [encode(model, p) if p != (model.tokenizer.bos_token or "") else [model.tokenizer.bos_token_id] for p in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id(model), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left padding: every row's next token sits in the last column
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        past, cur, new = None, ids, []
        for _ in range(max_new_tokens):
            o = hf(input_ids=cur.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                   past_key_values=past, use_cache=True, logits_to_keep=1)
            past = o.past_key_values
            logits = o.logits[:, -1].float().cpu()
            if top_k:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            cur = categorical(logits.softmax(-1), gen)
            new.append(cur)
            mask = torch.cat([mask, torch.ones_like(cur)], 1)
            pos = pos[:, -1:] + 1
        toks = torch.cat(new, 1)
        out += [model.tokenizer.decode(t, skip_special_tokens=True) for t in toks]
    return out


_PREFIXES: dict[tuple, list[str]] = {}


def prefixes(model: "TransformerBridge", n: int, length: int, seed: int) -> list[str]:
    """ROME's context templates: ``n`` short texts (``length`` tokens) sampled from the model
    itself, seeded; memoised in the process and cached on disk (sampling is slow on CPU)."""
    if n == 0:
        return []
    key = (fingerprint(model), n, length, seed, SAMPLER_VERSION)
    if key in _PREFIXES:
        return _PREFIXES[key]
    path = cache_dir() / "editing" / "prefixes" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16] + ".json")
    if path.is_file():
        texts = json.loads(path.read_text())
    else:
        from steerlens.io import write_json

        raw = sample(model, None, n=n, max_new_tokens=length, seed=seed, top_k=5)
        # ROME strips braces and ends each template with ". {}"
        texts = [" ".join(t.replace("{", " ").replace("}", " ").split()) for t in raw]
        write_json(path, texts)
    _PREFIXES[key] = texts
    return texts


def with_prefix(prefix: str, prompt: str) -> tuple[str, int]:
    """``"{prefix}. {prompt}"`` and the character where ``prompt`` starts."""
    if not prefix:
        return prompt, 0
    head = prefix + ". "
    return head + prompt, len(head)


@dataclass(frozen=True)
class Scored:
    """Log-probabilities of each (prompt, target) pair: ``logp`` per target token, the first
    token's probability and its rank (0 = top-1) among the whole vocabulary."""

    logp: list[list[float]]
    p_first: list[float]
    rank_first: list[int]

    def mean_logp(self) -> list[float]:
        """Length-normalised log-likelihood (ROME: mean NLL over target tokens, negated)."""
        return [sum(x) / len(x) for x in self.logp]


@torch.no_grad()
def score_targets(
    model: "TransformerBridge", prompts: Sequence[str], targets: Sequence[Sequence[int]], batch_size: int = 16
) -> Scored:
    """Teacher-forced log-probabilities of ``targets[i]`` after ``prompts[i]``."""
    logp, p_first, rank_first = [], [], []
    for s in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, tgt in zip(prompts[s : s + batch_size], targets[s : s + batch_size]):
            ids = encode(model, prompt)
            rows.append(ids + list(tgt[:-1]))
            spans.append((len(ids) - 1, list(tgt)))
        ids, mask = pad(rows, pad_id(model))
        hidden = final_hidden(model, ids, mask)
        for i, (p0, tgt) in enumerate(spans):
            lg = logits_at(model, hidden[i, p0 : p0 + len(tgt)]).log_softmax(-1)
            t = torch.tensor(tgt, device=lg.device)
            lp = lg.gather(-1, t[:, None])[:, 0]
            logp.append(lp.tolist())
            p_first.append(float(lp[0].exp()))
            rank_first.append(int((lg[0] > lg[0, t[0]]).sum()))
    return Scored(logp, p_first, rank_first)
