"""The shipped datasets load, meet their size and balance promises, and the loader validates input."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict

import pytest

from steerlens import data
from steerlens.data import ContrastivePair, EditRequest, Instruction, Statement
from steerlens.io import write_jsonl

KINDS = {"arithmetic": Statement, "facts": EditRequest, "harmfulness": Instruction, "negations": Statement,
         "sentiment": ContrastivePair, "truthfulness": Statement}


def test_names():
    assert data.names() == sorted(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_dataset_loads_with_a_card(name):
    records = data.load(name)
    assert records and all(type(r) is KINDS[name] for r in records)
    text = data.card(name)
    assert text.startswith(f"# {name}") and "tools/build_datasets.py" in text


def test_unknown_name_raises():
    for fn in (data.load, data.card, data.digest):
        with pytest.raises(ValueError, match="truthfulness"):
            fn("nope")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_digest_is_stable_sha256(name):
    d = data.digest(name)
    assert re.fullmatch(r"[0-9a-f]{64}", d)
    assert data.digest(name) == d


def _by_group(name: str) -> dict[str, list[Statement]]:
    groups: dict[str, list[Statement]] = defaultdict(list)
    for r in data.load(name):
        groups[r.group].append(r)
    return groups


@pytest.mark.parametrize("name", ["truthfulness", "negations", "arithmetic"])
def test_statements_come_in_true_false_pairs(name):
    rows = data.load(name)
    assert all(r.text.endswith(".") and r.label in (0, 1) for r in rows)
    assert len({r.text for r in rows}) == len(rows)
    for group, pair in _by_group(name).items():  # one fact: a true and a false statement, one family
        assert sorted(r.label for r in pair) == [0, 1] and len({r.family for r in pair}) == 1, group


def test_truthfulness():
    rows = data.load("truthfulness")
    assert len(rows) >= 600
    fams = Counter(r.family for r in rows)
    assert set(fams) == {"geography", "opposites", "science", "translation"}
    for fam in fams:
        labels = Counter(r.label for r in rows if r.family == fam)
        assert labels[1] == labels[0], (fam, labels)
    assert all(r.text[0].isupper() and " not " not in r.text for r in rows)


def test_negations_negate_the_truthfulness_statements():
    affirmative, negated = _by_group("truthfulness"), _by_group("negations")
    assert set(negated) == set(affirmative)
    for group, negs in negated.items():
        aff = {r.label: r.text for r in affirmative[group]}
        neg = {r.label: r.text for r in negs}
        # "X is Y." true -> "X is not Y." false: the negation of the true statement is the false one
        for label in (0, 1):
            words, neg_words = aff[label].split(), neg[1 - label].split()
            assert len(neg_words) - len(words) in (1, 2) and "not" in neg_words, (aff, neg)  # "is not", "does not mean"
            assert words[0] == neg_words[0] and words[-1] == neg_words[-1], (aff, neg)  # same subject, object
        assert negs[0].family == affirmative[group][0].family


def test_arithmetic_statements_are_correct_when_true():
    rows = data.load("arithmetic")
    assert len(rows) >= 200
    for r in rows:
        a, op, b, eq, c = r.text[:-1].split()
        value = int(a) + int(b) if op == "+" else int(a) * int(b)
        assert eq == "=" and r.label == (value == int(c)), r


def test_harmfulness():
    rows = data.load("harmfulness")
    harmful = [r for r in rows if r.label == 1]
    harmless = [r for r in rows if r.label == 0]
    assert len(harmful) >= 200 and len(harmless) >= 200
    for measure in (lambda t: len(t.split()), len):
        a = statistics.mean(measure(r.text) for r in harmful)
        b = statistics.mean(measure(r.text) for r in harmless)
        assert abs(a - b) <= 0.1 * min(a, b)
    by_group = defaultdict(Counter)
    for r in rows:
        by_group[r.group][r.label] += 1
    assert all(c[0] == c[1] > 0 for c in by_group.values())
    assert len({r.text for r in rows}) == len(rows)
    assert not {r.category for r in harmful} & {r.category for r in harmless}


def test_sentiment():
    rows = data.load("sentiment")
    assert len(rows) >= 100
    assert all(r.positive != r.negative for r in rows)
    assert len({r.group for r in rows}) == len(rows)
    assert len({r.topic for r in rows}) >= 5


def test_facts():
    rows = data.load("facts")
    assert len(rows) >= 60
    assert len({r.id for r in rows}) == len(rows)
    for r in rows:
        assert r.subject in r.prompt
        assert not r.prompt.endswith(" ")
        assert len(r.paraphrases) == 2 and all(r.subject in p for p in r.paraphrases)
        assert len(r.neighbourhood) == 3 and all(r.subject not in p for p in r.neighbourhood)
        assert r.target_true.startswith(" ") and r.target_new.startswith(" ")
        assert r.target_new != r.target_true
        assert r.id.startswith(r.relation + "-")
    assert len({r.relation for r in rows}) >= 3


def test_load_jsonl_round_trip(tmp_path):
    for name in KINDS:
        records = data.load(name)[:5]
        path = tmp_path / f"{name}.jsonl"
        write_jsonl(path, [_asdict(r) for r in records])
        assert data.load_jsonl(path, name) == records


def test_load_jsonl_bad_input(tmp_path):
    good = {"text": "Two plus two equals four.", "label": 1, "family": "arithmetic", "group": "g"}
    path = tmp_path / "mine.jsonl"

    write_jsonl(path, [good, {k: v for k, v in good.items() if k != "family"}])
    with pytest.raises(ValueError, match=r"mine\.jsonl:2.*missing.*family"):
        data.load_jsonl(path, "truthfulness")

    write_jsonl(path, [{**good, "extra": 1}])
    with pytest.raises(ValueError, match=r":1.*unexpected.*extra"):
        data.load_jsonl(path, "truthfulness")

    write_jsonl(path, [{**good, "label": 2}])
    with pytest.raises(ValueError, match="label"):
        data.load_jsonl(path, "truthfulness")

    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.load_jsonl(path, "truthfulness")

    with pytest.raises(ValueError, match="kind"):
        data.load_jsonl(path, "nope")


def test_load_jsonl_checks_edit_requests(tmp_path):
    row = _asdict(data.load("facts")[0])
    path = tmp_path / "edits.jsonl"
    for bad, match in [
        ({"paraphrases": row["paraphrases"][:1]}, "paraphrases"),
        ({"neighbourhood": row["neighbourhood"] + ["x"]}, "neighbourhood"),
        ({"subject": "Atlantis"}, "subject"),
        ({"target_new": row["target_true"]}, "target_new"),
    ]:
        write_jsonl(path, [{**row, **bad}])
        with pytest.raises(ValueError, match=match):
            data.load_jsonl(path, "facts")


def _asdict(record) -> dict:
    return json.loads(json.dumps(record.__dict__))  # tuples become lists, as in the JSONL


def test_prompt_rows_of_shipped_datasets():
    pairs = data.load("sentiment")
    rows = data.prompt_rows("sentiment")
    assert len(rows) == 2 * len(pairs)
    assert rows[0] == {"prompt": pairs[0].positive, "label": 1, "topic": pairs[0].topic, "group": pairs[0].group}
    assert rows[1]["prompt"] == pairs[0].negative and rows[1]["label"] == 0
    truth = data.prompt_rows("truthfulness")
    assert truth[0]["prompt"] == data.load("truthfulness")[0].text and "text" not in truth[0]
    facts = data.prompt_rows("facts")
    assert facts[0]["prompt"] == data.load("facts")[0].prompt and len(facts[0]["paraphrases"]) == 2


def test_prompt_rows_of_a_jsonl_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one", "label": 1}, {"prompt": "two", "x": 2}])
    assert data.prompt_rows(tmp_path / "a.jsonl") == [{"prompt": "one", "label": 1}, {"prompt": "two", "x": 2}]
    write_jsonl(tmp_path / "b.jsonl", [{"sentence": "no prompt field"}])
    with pytest.raises(ValueError, match="record 1 has no string 'prompt' or 'text'"):
        data.prompt_rows(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.prompt_rows(tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="neither a shipped dataset"):
        data.prompt_rows("no-such-dataset")


def test_round_robin_takes_one_relation_at_a_time():
    from steerlens.data import load, round_robin

    facts = load("facts")
    picked = round_robin(facts, 10)
    relations = [r.relation for r in picked]
    n_rel = len({r.relation for r in facts})
    assert len(picked) == 10
    assert len(set(relations[:n_rel])) == min(n_rel, 10)  # every relation before any repeats
    everything = round_robin(facts, 10 ** 6)
    assert sorted(r.id for r in everything) == sorted(r.id for r in facts)  # all of them, once each
    assert round_robin(facts, 0) == []
