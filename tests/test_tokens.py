import pytest

from steerlens.tokens import token_span, tokenize


def test_tokenize_pads_either_side(tiny):
    ids, mask, lengths = tokenize(tiny, ["ab", "abcd"], padding_side="left")
    assert lengths.tolist() == [3, 5]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    ids_r, mask_r, _ = tokenize(tiny, ["ab", "abcd"], padding_side="right")
    assert mask_r.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ids_r[0, :3].tolist() == ids[0, 2:].tolist() == [256, ord("a"), ord("b")]


def test_token_span(tiny):
    # byte-level: token i + 1 is character i (BOS first)
    assert token_span(tiny, "The Eiffel Tower is", "Eiffel Tower") == (5, 17)
    assert token_span(tiny, "a b a b", "a") == (5, 6)
    assert token_span(tiny, "a b a b", "a", occurrence=0) == (1, 2)
    with pytest.raises(ValueError, match="does not occur"):
        token_span(tiny, "The Eiffel Tower", "Louvre")
    with pytest.raises(ValueError, match="empty"):
        token_span(tiny, "x", "")


@pytest.mark.gemma
def test_token_span_gemma(gemma):
    prompt = "The Eiffel Tower is located in the city of"
    start, end = token_span(gemma, prompt, "Eiffel Tower")
    ids = gemma.tokenizer(prompt)["input_ids"]
    assert gemma.tokenizer.decode(ids[start:end]).strip() == "Eiffel Tower"
