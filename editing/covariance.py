"""Second-moment statistics C = E[k kᵀ] of MLP keys at one layer (ROME eq. 2's C), streamed in
float64 and cached on disk under everything that changes them (model fingerprint, layer, corpus
hash, token budget, chunk length and, for model-sampled text, the sampling batch)."""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float

from editing.prompts import SAMPLER_VERSION, sample
from editing.sites import check_layer, key_hook
from steerlens import artifacts
from steerlens.forward import run_to
from steerlens.models import cache_dir, fingerprint, model_name
from steerlens.tokens import encode, pad, pad_id

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = "steerlens.key_statistics"
#: 2: format name and version, checked on load with the model fingerprint (version-1 files had
#: neither: ``KeyStatistics.load`` refuses them, so the cache recomputes them)
VERSION = 2
#: the metadata checked on load: ``n`` and the ``info`` that ``key_statistics`` records
_FIELDS: dict[str, artifacts.Check] = {
    "n": (lambda v: artifacts.POS_INT[0](v) and v >= 2, "an integer >= 2"), "model": artifacts.OPT_STR,
    "fingerprint": artifacts.OPT_STR, "layer": artifacts.OPT_INT, "corpus_hash": artifacts.OPT_STR,
    "n_tokens": artifacts.OPT_INT, "chunk_tokens": artifacts.OPT_INT, "sample_batch": artifacts.OPT_INT,
}
#: default token budgets, well under a few minutes on a CPU. Sampled text (the default corpus):
#: Gemma 3 270M on 2 cores samples 8k tokens in 95-110 s, once (then cached); more did not make
#: its edits more specific (8k, 16k, 30k: neighbourhood 0.63 each; benchmarks/README.md). A given
#: corpus is only read: 20k tokens to layer 2 in ~15 s. Raise them for wide MLPs.
DEFAULT_TOKENS = 8_000
DEFAULT_CORPUS_TOKENS = 20_000
SAMPLE_BATCH = 64
#: ``corpus=SHIPPED`` names the shipped datasets' text (``shipped_corpus()``)
SHIPPED = "shipped"
_MEMO: dict[str, "KeyStatistics"] = {}


class CovarianceFitter:
    """Streaming first and second moments of row vectors, accumulated in float64
    (style of concept-erasure's ``LeaceFitter``): ``fitter.update(x).update(y).finalize()``."""

    def __init__(self, dim: int, *, device: str | torch.device = "cpu"):
        self.dim = dim
        self.n = 0
        self.sum_ = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer_ = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x: Float[torch.Tensor, "n d"]) -> "CovarianceFitter":
        x = x.reshape(-1, self.dim).to(self.sum_.device, torch.float64)
        self.n += x.shape[0]
        self.sum_ += x.sum(0)
        self.sum_outer_ += x.T @ x
        return self

    def finalize(self, **info) -> "KeyStatistics":
        if self.n < 2:
            raise ValueError(f"need at least 2 vectors to estimate a covariance, got {self.n}")
        return KeyStatistics(mom2=self.sum_outer_ / self.n, mean=self.sum_ / self.n, n=self.n, info=dict(info))


@dataclass(frozen=True)
class KeyStatistics:
    """Uncentred second moment ``mom2`` = E[k kᵀ] (ROME's C), the mean, and the count."""

    mom2: Float[torch.Tensor, "d d"]
    mean: Float[torch.Tensor, " d"]
    n: int
    info: dict

    @property
    def cov(self) -> torch.Tensor:
        """Centred, unbiased covariance (``torch.cov`` convention)."""
        return (self.mom2 - torch.outer(self.mean, self.mean)) * self.n / (self.n - 1)

    def inverse(self, reg: float = 1e-3) -> torch.Tensor:
        """(C + λ·tr(C)/d·I)⁻¹ in float64. The ridge λ keeps C invertible when the corpus has
        fewer informative tokens than MLP neurons (dead GELU units give near-zero eigenvalues)."""
        c = self.mom2
        d = c.shape[0]
        ridge = reg * torch.trace(c) / d
        return torch.linalg.inv(c + ridge * torch.eye(d, dtype=c.dtype, device=c.device))

    def check_compatible(self, model: "TransformerBridge", *, force: bool = False) -> None:
        """Raise ``ValueError`` when the statistics do not fit ``model``: a width other than its
        ``d_mlp``, a layer it lacks, or (unless ``force``, which then warns) another fingerprint
        than ``info["fingerprint"]`` (``steerlens.artifacts.check_compatible``)."""
        layer = self.info.get("layer")
        meta = artifacts.Meta(FORMAT, VERSION, hook="mlp_post" if layer is None else key_hook(layer),
                              layers=None if layer is None else [layer], d_model=int(self.mom2.shape[0]),
                              model_name=self.info.get("model"), fingerprint=self.info.get("fingerprint"))
        artifacts.check_compatible(model, meta, "key statistics", force=force)

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (``mom2``, ``mean`` + JSON metadata: ``info``, ``n``) atomically."""
        return artifacts.save(path, {"mom2": self.mom2, "mean": self.mean},
                              {**self.info, "format": FORMAT, "version": VERSION, "n": self.n})

    @classmethod
    def load(cls, path: str | os.PathLike, model: "TransformerBridge | None" = None, *,
             force: bool = False) -> "KeyStatistics":
        """Read a file written by ``save``; ``ValueError`` naming the file if it is not key
        statistics of format version ``VERSION`` or older or, with ``model``, they do not fit it
        (``check_compatible``)."""
        t, meta = artifacts.load(path, FORMAT, VERSION, what="key-statistics file", fields=_FIELDS, required=("n",))
        d = t["mean"].shape[0] if "mean" in t and t["mean"].ndim == 1 else None
        artifacts.check_tensors(path, t, {"mom2": (d, d), "mean": (d,)}, f"a mean of length {d}")
        info = {k: v for k, v in meta.items() if k not in ("format", "version", "n")}
        with artifacts.naming(path):
            if not (torch.isfinite(t["mom2"]).all() and torch.isfinite(t["mean"]).all()):
                raise ValueError("the statistics hold NaN or inf")
            stats = cls(mom2=t["mom2"], mean=t["mean"], n=meta["n"], info=info)
            if model is not None:
                stats.check_compatible(model, force=force)
        return stats


def corpus_texts(corpus: str | os.PathLike | Sequence[str]) -> list[str]:
    """Documents from a list of strings, ``"shipped"`` (``shipped_corpus()``) or a file:
    ``.jsonl`` (one object per line with a string field ``text``, ``prompt`` or
    ``positive``/``negative``), else plain text, one document per blank-line-separated block."""
    if isinstance(corpus, str) and corpus == SHIPPED and not Path(corpus).exists():
        return shipped_corpus()
    if isinstance(corpus, (list, tuple)):
        bad = next((i for i, t in enumerate(corpus) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"corpus[{bad}] must be a str, got {type(corpus[bad]).__name__}")
        texts = [t for t in corpus if t.strip()]
    elif isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        texts = _jsonl_texts(path) if path.suffix == ".jsonl" else _plain_texts(path)
        if not texts:
            raise ValueError(f"the corpus file {path} holds no text")
    else:
        raise TypeError(f"corpus must be a path, 'shipped' or a list of strings, got {type(corpus).__name__}")
    if not texts:
        raise ValueError("the corpus holds no text")
    return texts


_TEXT_FIELDS = ("text", "prompt", "positive", "negative")


def _jsonl_texts(path: Path) -> list[str]:
    """The text fields of each line of a JSONL corpus; ``ValueError`` naming ``file:line`` of a bad line."""
    from steerlens.io import read_jsonl

    rows = read_jsonl(path)  # rejects lines that are not JSON objects, naming them
    # the line number of each row (read_jsonl skips the same blank lines)
    numbers = [i for i, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.decode("utf-8", "replace").strip()]
    texts = []
    for i, row in zip(numbers, rows):
        fields = [k for k in _TEXT_FIELDS if k in row]
        if not fields:
            raise ValueError(f"{path}:{i}: the line has none of the text fields {list(_TEXT_FIELDS)} "
                             f"(it has {sorted(row)})")
        for k in fields:
            if not isinstance(row[k], str):
                raise ValueError(f"{path}:{i}: field {k!r} must be a string, got {row[k]!r}")
            texts.append(row[k])
    return [t for t in texts if t.strip()]


def _plain_texts(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return [b.strip() for b in raw.split("\n\n") if b.strip()]


def corpus_hash(corpus: str | os.PathLike | Sequence[str] | None, seed: int) -> str:
    if corpus is None:
        return hashlib.sha256(f"model-sampled:v{SAMPLER_VERSION}:seed={seed}".encode()).hexdigest()[:16]
    return hashlib.sha256("\x00".join(corpus_texts(corpus)).encode()).hexdigest()[:16]


def cache_path(model: "TransformerBridge", layer: int, chash: str, n_tokens: int, chunk_tokens: int,
               sample_batch: int | None = None) -> Path:
    """Where the statistics of one request are cached: named by everything that changes them
    (``sample_batch``, the rows sampled at a time, only for model-sampled text)."""
    batch = "" if sample_batch is None else f"-b{sample_batch}"
    name = f"{fingerprint(model)}-L{layer}-{chash}-{n_tokens}-c{chunk_tokens}{batch}.safetensors"
    return cache_dir() / "editing" / "stats" / name


def key_statistics(
    model: "TransformerBridge",
    layer: int,
    *,
    corpus: str | os.PathLike | Sequence[str] | None = None,
    n_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    chunk_tokens: int = 128,
    cache: bool = True,
    progress: bool = True,
) -> KeyStatistics:
    """E[k kᵀ] of the keys ``blocks.{layer}.mlp.hook_post`` over up to ``n_tokens`` corpus tokens
    (default: ``DEFAULT_TOKENS`` sampled, ``DEFAULT_CORPUS_TOKENS`` from a given corpus).

    ``corpus``: ``None`` samples text from the model itself (seeded), ``"shipped"``, a path, or a
    list of strings. For factual edits, text that states facts gives more specific edits than
    the model's generic samples (ROME used Wikipedia; offline, ``"shipped"``). BOS positions are
    left out (their activations are outliers). Cached under the steerlens cache; a cached result
    loads in well under a second.
    """
    from tqdm.auto import tqdm

    layer = check_layer(model, layer)
    if n_tokens is None:
        n_tokens = DEFAULT_TOKENS if corpus is None else DEFAULT_CORPUS_TOKENS
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be >= 2, got {n_tokens}")
    if not 2 <= chunk_tokens <= int(model.cfg.n_ctx):
        raise ValueError(f"chunk_tokens must be in 2..{model.cfg.n_ctx} (model.cfg.n_ctx), got {chunk_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chash = corpus_hash(corpus, seed)
    # batching changes the sampled text (each batch has its own seed), not the keys of a given corpus
    sample_batch = max(batch_size, SAMPLE_BATCH) if corpus is None else None
    path = cache_path(model, layer, chash, n_tokens, chunk_tokens, sample_batch)
    if cache and str(path) in _MEMO:
        return _MEMO[str(path)]
    if cache and path.is_file():
        request = dict(layer=layer, corpus_hash=chash, n_tokens=n_tokens, chunk_tokens=chunk_tokens, sample_batch=sample_batch)
        try:
            stats = KeyStatistics.load(path, model)
            other = {k: stats.info.get(k) for k, v in request.items() if stats.info.get(k) != v}
            if other:
                raise ValueError(f"{path} holds the statistics of another request ({other})")
        except (ValueError, OSError) as e:  # another version or model, unreadable: a miss, replaced below
            warnings.warn(f"recomputing the key statistics: {e}", stacklevel=2)
        else:
            _MEMO[str(path)] = stats
            return stats

    t0 = time.perf_counter()
    fitter = CovarianceFitter(int(model.cfg.d_mlp))
    bar = tqdm(total=n_tokens, desc=f"key statistics L{layer}", unit="tok", disable=not progress)
    for ids, mask in _chunks(model, corpus, n_tokens, seed, sample_batch or batch_size, chunk_tokens):
        with torch.no_grad():
            k = run_to(model, ids, mask, key_hook(layer))
        real = mask.bool().clone()
        real[:, 0] = False  # BOS
        rows = k[real.to(k.device)][: n_tokens - fitter.n]
        fitter.update(rows)
        bar.update(rows.shape[0])
        if fitter.n >= n_tokens:
            break
    bar.close()
    stats = fitter.finalize(model=model_name(model), fingerprint=fingerprint(model), layer=layer,
                            corpus_hash=chash, n_tokens=n_tokens, chunk_tokens=chunk_tokens, sample_batch=sample_batch,
                            seconds=time.perf_counter() - t0)
    if cache:
        stats.save(path)
        _MEMO[str(path)] = stats
    return stats


def _chunks(model, corpus, n_tokens, seed, batch_size, chunk_tokens):
    """Batches of right-padded token chunks (BOS + up to ``chunk_tokens - 1`` tokens)."""
    bos = model.tokenizer.bos_token_id
    if corpus is None:
        # model-sampled text, generated lazily batch by batch until the budget is met (Gemma 3
        # 270M, 2 CPU cores, 127 tokens per row: 121 tok/s at 64 rows, 110 at 128, 100 at 256)
        i, produced = 0, 0
        while True:
            left = math.ceil(max(n_tokens - produced, 1) / (chunk_tokens - 1))  # rows still needed
            n = min(batch_size, left)
            texts = sample(model, None, n=n, max_new_tokens=chunk_tokens - 1, seed=seed + i, batch_size=n)
            i, produced = i + 1, produced + n * (chunk_tokens - 1)
            yield pad([encode(model, t)[:chunk_tokens] for t in texts], pad_id(model))
    rows: list[list[int]] = []
    for text in corpus_texts(corpus):
        ids = encode(model, text)
        body = ids[1:] if bos is not None and ids and ids[0] == bos else ids
        head = [bos] if bos is not None else []
        for s in range(0, len(body), chunk_tokens - len(head)):
            rows.append(head + body[s : s + chunk_tokens - len(head)])
            if len(rows) == batch_size:
                yield pad(rows, pad_id(model))
                rows = []
    if rows:
        yield pad(rows, pad_id(model))


def shipped_corpus() -> list[str]:
    """The text of steerlens' shipped datasets other than ``facts`` (statements, instructions,
    sentences; over 20k Gemma tokens): a quick offline corpus for the key statistics (pass
    ``corpus="shipped"``). On Gemma 3 270M it also gives more specific edits than model-sampled
    text (layer 2, 10 test facts: neighbourhood 0.87 with 20k shipped tokens, 0.63 with 8k, 16k
    or 30k sampled ones; benchmarks/README.md)."""
    from steerlens import data

    texts: list[str] = []
    for name in data.names():
        if name == "facts":
            continue
        for r in data.load(name):
            texts += [getattr(r, k) for k in ("text", "positive", "negative") if isinstance(getattr(r, k, None), str)]
    return texts
