"""Neutral text: what an intervention costs on text it should leave alone.

One set of plain sentences (``NEUTRAL_TEXTS``), one batched forward over them
(``next_token_logprobs``) and two pure functions of its result (``perplexity``, ``kl``), shared by
steering (``steer.steering_cost``, ``steer.sweep``, ``steer.calibrate``) and editing
(``editing.evaluation``). Only positions that have a next token count: position ``t`` of a text
of ``T`` tokens predicts token ``t + 1``, for ``t = 0 .. T − 2`` (BOS included, as the tokenizer is
configured), so a text contributes ``T − 1`` rows.

The forward runs through the bridge (``steerlens.forward.final_hidden``), so the hooks of any
steering, eraser or monitor block active in the calling context fire in it, and a weight edit in
place shows in it. Padding is on the right: real tokens never see a pad, so a batch gives the
rows each text gives alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int

from steerlens.forward import final_hidden, logits_at
from steerlens.tokens import check_prompts, encode, tokenize

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["NEUTRAL_TEXTS", "kl", "next_token_logprobs", "next_tokens", "perplexity"]

#: Short plain sentences for measuring what an intervention costs. None names an entity of the
#: shipped ``facts`` dataset or uses a word that only one side of the shipped ``sentiment`` pairs
#: uses (``tests/test_neutral.py`` checks both).
NEUTRAL_TEXTS: tuple[str, ...] = (
    "The library opens at nine in the morning and closes at six in the evening.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The train to the city leaves from the second platform every half hour.",
    "Most houses on the street have two floors and a small garden at the back.",
    "The report lists the number of visitors for each month of the year.",
    "The bridge over the river is built of stone and has three arches.",
    "The meeting was moved from Tuesday to Thursday afternoon.",
    "A week has seven days and a year usually has three hundred and sixty-five.",
    "The recipe uses flour, sugar, two eggs and a cup of milk.",
    "He parked the car in front of the building and walked to the entrance.",
    "The museum has a collection of maps from the eighteenth century.",
    "Each chapter of the manual describes one part of the machine.",
    "The weather was mild for the season, and most people spent the afternoon outside.",
    "To make a simple bread, mix flour, water, salt and yeast, then let the dough rest for an hour.",
    "She opened the window, sat down at her desk and started writing a letter to an old friend.",
    "Many small towns have a weekly market where farmers sell vegetables, cheese and eggs.",
)


@torch.no_grad()
def next_token_logprobs(model: "TransformerBridge", texts: Sequence[str] = NEUTRAL_TEXTS, *,
                        batch_size: int = 8) -> Float[torch.Tensor, "n_tokens vocab"]:
    """``log p(· | x_{≤t})`` (float32, on the model's device) at every position of ``texts`` that
    has a next token: text by text, ``T − 1`` rows for a text of ``T`` tokens (``next_tokens``
    gives the tokens they predict). Raises ``ValueError`` for a text longer than the context, or
when no text has two tokens."""
    texts = check_prompts(texts)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask, _ = tokenize(model, texts[i : i + batch_size], padding_side="right")
        hidden = final_hidden(model, ids, mask)  # [batch, pos, d_model]
        has_next = (mask[:, 1:] & mask[:, :-1]).bool().to(hidden.device)  # right padding: t < T − 1
        out.append(logits_at(model, hidden[:, :-1][has_next]).log_softmax(-1))
    logprobs = torch.cat(out)
    if logprobs.shape[0] == 0:
        raise ValueError("texts: no text has a position with a next token (each is one token long)")
    return logprobs


def next_tokens(model: "TransformerBridge", texts: Sequence[str] = NEUTRAL_TEXTS) -> Int[torch.Tensor, " n_tokens"]:
    """The token each row of ``next_token_logprobs(model, texts)`` predicts: ``x_{t+1}``."""
    return torch.tensor([t for text in check_prompts(texts) for t in encode(model, text)[1:]], dtype=torch.long)


def perplexity(logprobs: Float[torch.Tensor, "n_tokens vocab"], targets: Int[torch.Tensor, " n_tokens"]) -> float:
    """``ppl = exp(−(1/N) Σ_t log p(x_{t+1} | x_{≤t}))`` over the ``N`` rows."""
    if logprobs.ndim != 2 or targets.shape != logprobs.shape[:1]:
        raise ValueError(f"need logprobs [n, vocab] and targets [n], got {tuple(logprobs.shape)} and {tuple(targets.shape)}")
    nll = -logprobs.float().gather(-1, targets.to(logprobs.device)[:, None]).mean()
    return math.exp(float(nll))


def kl(reference: Float[torch.Tensor, "n_tokens vocab"], current: Float[torch.Tensor, "n_tokens vocab"]) -> float:
    """``KL(p_ref ‖ p) = (1/N) Σ_t Σ_v p_ref(v | t) · (log p_ref(v | t) − log p(v | t))``, nats per row."""
    if reference.shape != current.shape or reference.ndim != 2:
        raise ValueError(f"need two log-prob tensors of one shape [n, vocab], got {tuple(reference.shape)} "
                         f"and {tuple(current.shape)}")
    ref, cur = reference.float(), current.to(reference.device).float()
    return float(torch.nn.functional.kl_div(cur, ref, log_target=True, reduction="batchmean"))
