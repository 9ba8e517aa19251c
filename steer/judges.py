"""Judges: score generated text from outside the model, sharing nothing with the steering data.

A judge is any callable ``texts -> scores`` (one float per text). ``VaderJudge`` is the shipped
sentiment judge: VADER (Hutto & Gilbert 2014, ICWSM, "VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text"), a human-rated lexicon plus rules, offline and
deterministic; it never sees an activation, so it cannot reward the injection itself.
``steer.evaluate.ProbeScore`` is the other kind, a *probe judge*: it reads the model's own
activations along a direction learnt from the same pairs as the vector, an extra check only.

``HELD_OUT_OPENINGS`` are prompts for judging a vector: see its card below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["HELD_OUT_OPENINGS", "Judgement", "VaderJudge", "degenerate_rate", "is_degenerate", "judge_texts"]

#: Card. *What*: 32 neutral sentence openings (no evaluative word) for judging steering on prompts
#: that neither built nor calibrated the vector. *How made*: written by hand for steerlens on
#: 2026-12-02, after the shipped ``sentiment`` pairs and before any steering was judged on them;
#: everyday topics (travel, home, family, work, school). *Checked* (``tests/test_steer_judges.py``):
#: none is in ``steer.evaluate.NEUTRAL_OPENINGS`` (the calibration prompts) or
#: ``steerlens.neutral.NEUTRAL_TEXTS``, none occurs in a shipped ``sentiment`` sentence, and VADER
#: scores every opening itself neutral (|compound| < 0.05). *Size*: 32 (a share moves in steps of 1/32).
HELD_OUT_OPENINGS: tuple[str, ...] = (
    "The bus turned at the corner and", "This afternoon I walked to the park and",
    "My sister called me last night to say", "The package arrived on Monday, and",
    "We moved into the new flat in April and", "The lecture on Friday was about", "When the plane landed, we",
    "The dentist appointment was at ten, so", "My cousin started a new job and", "The parcel from my aunt contained",
    "On Sunday we drove to the coast and", "The laundry room in our building", "I spent the evening reading about",
    "The neighbours next door have", "Our team meeting on Wednesday", "The museum downtown has",
    "After lunch, my colleague and I", "The concert last night", "The hotel room on the fourth floor",
    "My grandfather used to tell me that", "The school term begins next week, and",
    "This morning the bakery on our street", "The road to the village", "I bought a second-hand bicycle and",
    "The football match on Saturday", "The email from the landlord said", "Our garden this spring",
    "The class I am taking this term", "My first day at the new school", "The ferry to the island",
    "The lunch at my friend's house", "The documentary we watched yesterday",
)

Judge = Callable[[list[str]], Sequence[float]]


@lru_cache(maxsize=1)
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("VaderJudge needs the vaderSentiment package: pip install 'vaderSentiment>=3.3.2'") from e
    return SentimentIntensityAnalyzer()


@dataclass(frozen=True)
class VaderJudge:
    """VADER's normalised ``compound = x / √(x² + α)``, α = 15, of the summed valences ``x`` (Hutto &
    Gilbert 2014), in [−1, 1] per text; positive when ≥ ``threshold``, negative when ≤ −``threshold``
    (0.05, the authors' recommended cut-off). HTML tags are replaced by a space first: VADER splits
    on whitespace, so ``<strong>beautiful</strong>`` would hide the word a reader sees."""

    threshold: float = 0.05
    name: str = "vader"

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and 0 <= self.threshold < 1):
            raise ValueError(f"VaderJudge threshold must be a number in [0, 1), got {self.threshold!r}")

    def __call__(self, texts: Sequence[str]) -> list[float]:
        if isinstance(texts, str):
            raise TypeError("VaderJudge takes a list of texts, got one str")
        sia = _analyzer()
        return [float(sia.polarity_scores(_TAG.sub(" ", t))["compound"]) for t in texts]


_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")  # an HTML tag: <b>, </strong>, <br/>, <a href="..">


_WORD = re.compile(r"\w+(?:'\w+)?")


def is_degenerate(text: str, *, min_words: int = 1, max_run: int = 3, min_distinct: float = 0.5) -> bool:
    """Degenerate repetition: fewer than ``min_words`` words (default: no word at all), one word
    ``max_run`` times in a row ("which which which"), or at least 6 words of which under
    ``min_distinct`` of the word trigrams are distinct (a loop of a phrase). A short continuation
    that ends at EOS is not degenerate."""
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < min_words:
        return True
    run = 1
    for a, b in zip(words, words[1:]):
        run = run + 1 if a == b else 1
        if run >= max_run:
            return True
    if len(words) >= 6:
        grams = list(zip(words, words[1:], words[2:]))
        return len(set(grams)) / len(grams) < min_distinct
    return False


def degenerate_rate(texts: Sequence[str], **kw: Any) -> float:
    """Fraction of ``texts`` that ``is_degenerate``."""
    texts = list(texts)
    if not texts:
        raise ValueError("degenerate_rate: texts is empty")
    return sum(is_degenerate(t, **kw) for t in texts) / len(texts)


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on a set of continuations."""

    mean: float  # mean score
    positive_share: float | None  # fraction with score >= threshold (None: the judge has no threshold)
    negative_share: float | None  # fraction with score <= -threshold
    degenerate: float  # degenerate_rate of the continuations
    scores: tuple[float, ...]


def judge_texts(judge: Judge, texts: Sequence[str], *, threshold: float | None = None) -> Judgement:
    """Score ``texts`` with ``judge``; shares use ``threshold`` (default: ``judge.threshold`` if it has one)."""
    texts = list(texts)
    if not texts:
        raise ValueError("judge_texts: texts is empty")
    scores = judge(texts)
    scores = [float(s) for s in scores]
    if len(scores) != len(texts):
        raise ValueError(f"the judge returned {len(scores)} scores for {len(texts)} texts")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError("the judge returned a non-finite score")
    t = getattr(judge, "threshold", None) if threshold is None else threshold
    pos = neg = None
    if t is not None:
        pos = sum(s >= t for s in scores) / len(scores)
        neg = sum(s <= -t for s in scores) / len(scores)
    return Judgement(sum(scores) / len(scores), pos, neg, degenerate_rate(texts), tuple(scores))
