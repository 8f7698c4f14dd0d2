"""Tokenizers: text <-> token ids. Each serializes to a small JSON dict saved with a run."""

import numpy as np

from llm_jax.errors import UserError


class CharTokenizer:
  """One token per character; the vocabulary is the sorted set of the corpus's characters."""

  kind = "char"

  def __init__(self, chars: str):
    if list(chars) != sorted(set(chars)):
      raise ValueError("a char vocabulary is sorted, without repeats")
    self.chars = chars
    self.vocab_size = len(chars)
    # id i <-> code point _codes[i]; sorted, so encoding is a binary search
    self._codes = np.frombuffer(chars.encode("utf-32-le"), np.uint32)

  @classmethod
  def from_text(cls, text: str) -> "CharTokenizer":
    return cls("".join(sorted(set(text))))

  def encode(self, text: str) -> np.ndarray:
    """str -> (N,) int32 ids; a character outside the vocabulary is an error naming it."""
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    ids = np.minimum(np.searchsorted(self._codes, codes), self.vocab_size - 1)
    bad = self._codes[ids] != codes
    if bad.any():
      i = int(np.argmax(bad))
      raise UserError(f"character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in the "
                      f"tokenizer's vocabulary of {self.vocab_size} characters: remove or replace it")
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1).tolist())

  def to_dict(self) -> dict:
    return {"kind": self.kind, "chars": self.chars}


def tokenizer_from_dict(d: dict):
  if d.get("kind") == "char":
    return CharTokenizer(d["chars"])
  raise UserError(f"unknown tokenizer kind {d.get('kind')!r} in the run's tokenizer.json")
