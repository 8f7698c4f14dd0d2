import numpy as np
import pytest

from llm_jax.data.tokenizers import CharTokenizer, tokenizer_from_dict
from llm_jax.errors import UserError


def test_char_round_trip_and_vocab():
  text = "Hello, wörld! 🎭\nzebra"
  tok = CharTokenizer.from_text(text)
  assert tok.chars == "".join(sorted(set(text)))
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.shape == (len(text),)
  assert ids.min() >= 0 and ids.max() < tok.vocab_size
  assert tok.decode(ids) == text
  # ids follow the sorted vocabulary
  assert tok.encode(tok.chars).tolist() == list(range(tok.vocab_size))


def test_serialization_round_trip():
  tok = CharTokenizer.from_text("abcabc xyz")
  again = tokenizer_from_dict(tok.to_dict())
  assert again.chars == tok.chars
  assert again.encode("zyx cba").tolist() == tok.encode("zyx cba").tolist()


@pytest.mark.parametrize("text,bad,pos", [("abQ", "Q", 2), ("Zab", "Z", 0), ("a€", "€", 1)])
def test_unknown_character_names_it_and_its_position(text, bad, pos):
  tok = CharTokenizer.from_text("abc")
  with pytest.raises(UserError) as e:
    tok.encode(text)
  msg = str(e.value)
  assert repr(bad) in msg and f"position {pos}" in msg and "\n" not in msg
