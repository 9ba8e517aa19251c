"""steer.judges: the VADER judge, degenerate repetition, judged shares and the held-out openings."""

import subprocess
import sys

import pytest

from steer.evaluate import NEUTRAL_OPENINGS
from steer.judges import HELD_OUT_OPENINGS, VaderJudge, degenerate_rate, is_degenerate, judge_texts
from steerlens import data
from steerlens.neutral import NEUTRAL_TEXTS


def test_vader_judge_scores_polarity():
    judge = VaderJudge()
    pos, neg, neutral = judge(["It was a wonderful day and I loved it.", "The food was awful and I hated it.",
                               "The train leaves at nine."])
    assert pos > 0.5 and neg < -0.5 and abs(neutral) < 0.05
    assert judge([]) == []
    with pytest.raises(TypeError, match="list of texts"):
        judge("one text")
    with pytest.raises(ValueError, match="threshold"):
        VaderJudge(threshold=1.5)


def test_vader_judge_reads_words_inside_html_tags():
    # the model writes markup ("is a <strong>beautiful</strong> one"); VADER splits on whitespace, so
    # without stripping the tags it would score the word a reader sees as no word at all
    judge = VaderJudge()
    tagged, plain = judge(["The road is a <strong>beautiful</strong> one.", "The road is a beautiful one."])
    assert tagged == plain > 0.5
    assert judge(['<a href="x">lovely</a> day<br/>'])[0] == judge(["lovely day"])[0]
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    text = "x < y and y > z is good, a <3 love"  # comparison signs and an emoticon are not tags: left as they are
    assert judge([text])[0] == SentimentIntensityAnalyzer().polarity_scores(text)["compound"] > 0


def test_judge_texts_shares_and_a_users_own_judge():
    texts = ["It was wonderful.", "It was awful.", "It was at nine.", "Great, great fun."]
    j = judge_texts(VaderJudge(), texts)
    assert (j.positive_share, j.negative_share) == (0.5, 0.25)
    assert j.mean == pytest.approx(sum(j.scores) / 4) and len(j.scores) == 4

    def lengths(ts):  # any callable texts -> scores is a judge; no threshold: no shares
        return [len(t) for t in ts]

    own = judge_texts(lengths, texts)
    assert own.positive_share is None and own.mean == pytest.approx(sum(map(len, texts)) / 4)
    assert judge_texts(lengths, texts, threshold=16).positive_share == 0.5
    with pytest.raises(ValueError, match="returned 1 scores for 4"):
        judge_texts(lambda ts: [1.0], texts)
    with pytest.raises(ValueError, match="empty"):
        judge_texts(lengths, [])


@pytest.mark.parametrize("text, degenerate", [
    (" and then we went home for dinner with friends.", False),
    (" by any which which which way", True),  # a word three times in a row
    (" the end of the day the end of the day the end of the day", True),  # a phrase in a loop
    (" ok.", False),  # short (it ended at EOS) but no repetition
    ("", True),  # no word at all
    ("\n\n ...", True),
    (" it was fine, it was fine.", False),  # one repeat is not a loop
])
def test_is_degenerate(text, degenerate):
    assert is_degenerate(text) is degenerate


def test_degenerate_rate():
    assert degenerate_rate(["a b c d", "x x x x", "", "one two three"]) == 0.5
    assert degenerate_rate(["ok", "fine"], min_words=2) == 1.0
    with pytest.raises(ValueError, match="empty"):
        degenerate_rate([])


def test_held_out_openings_are_held_out_and_neutral():
    """The card's claims: 24+ distinct openings, none used for calibration or cost, none inside a
    shipped sentiment sentence, each itself neutral to VADER."""
    assert len(HELD_OUT_OPENINGS) >= 24 and len(set(HELD_OUT_OPENINGS)) == len(HELD_OUT_OPENINGS)
    assert not set(HELD_OUT_OPENINGS) & set(NEUTRAL_OPENINGS)
    sentences = [s.lower() for p in data.load("sentiment") for s in (p.positive, p.negative)] + \
        [t.lower() for t in NEUTRAL_TEXTS]
    for o in HELD_OUT_OPENINGS:
        assert not any(o.lower() in s for s in sentences), o
    assert max(abs(s) for s in VaderJudge()(list(HELD_OUT_OPENINGS))) < 0.05


def test_vader_works_offline_without_requests():
    """vaderSentiment imports ``requests`` only in its interactive demo: the judge never loads it."""
    code = ("import sys; from steer.judges import VaderJudge; VaderJudge()(['a good day']); "
            "print('requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
