"""CLIP BPE tokenizer: known ids, special tokens, cleaning, truncation, decoding."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent.imagebind.bpe import SimpleTokenizer, clean_text, default_tokenizer, tokenize


def test_known_ids():
    ids = tokenize(["a diagram", "a dog", "a cat"])
    assert ids.dtype == torch.long and ids.shape == (3, 77)
    assert ids[:, :4].tolist() == [[49406, 320, 22697, 49407], [49406, 320, 1929, 49407], [49406, 320, 2368, 49407]]
    assert (ids[:, 4:] == 0).all()
    assert tokenize("a dog").shape == (1, 77)


def test_vocabulary_and_special_tokens():
    tok = default_tokenizer()
    assert tok.vocab_size == 49408
    assert (tok.sot_token, tok.eot_token) == (49406, 49407)
    assert tok.encode("<|startoftext|>a dog<|endoftext|>") == [49406, 320, 1929, 49407]


def test_cleaning_without_ftfy():
    assert clean_text("  A\tDog &amp;amp;\n  Cat ") == "a dog & cat"
    tok = default_tokenizer()
    assert tok.encode("A   DOG") == tok.encode("a dog")
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")  # NFC, as ftfy does


def test_decode_round_trips_words_and_unicode():
    tok = SimpleTokenizer()
    assert tok.decode(tok.encode("a photo of a dog")) == "a photo of a dog "  # `</w>` ends each word
    for text in ["naïve café 12 3!", "emoji 🐶"]:
        # Digits and punctuation become words of their own; the characters survive.
        assert tok.decode(tok.encode(text)).replace(" ", "") == clean_text(text).replace(" ", "")


def test_truncation_keeps_eot_last():
    long = "word " * 200
    ids = tokenize(long)
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert (ids[0, 1:-1] != 0).all()
    assert tokenize(long, context_length=10).shape == (1, 10)
    with pytest.raises(ValueError, match="too long"):
        tokenize(long, truncate=False)
