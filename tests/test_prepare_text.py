"""`llm-jax prepare` of text files (data/prepare.py): separators are UTF-8 text with escapes, a
BPE learns from training text alone."""

import pytest

from llm_jax.data import prepare as prep
from llm_jax.errors import UserError


@pytest.mark.parametrize("separator, typed", [("\u00a7", "\u00a7"), ("\u2029", "\\u2029"),
                                              ("\n\n", "\\n\\n"), ("\u00e9\u00e9", "\u00e9\u00e9")])
def test_a_separator_is_utf8_text_with_escapes(tmp_path, separator, typed):
  (tmp_path / "t.txt").write_text(separator.join(["one cat", "two dogs", "three birds"]),
                                  encoding="utf-8")
  m = prep.prepare(str(tmp_path / "t.txt"), "char", str(tmp_path / "out"), separator=typed,
                   val="1", workers=0, progress=False)
  assert m["documents"] == 3 and m["source"]["separator"] == separator
  assert not set(separator) & set(m["tokenizer"]["chars"])  # cut out: no character of the data


def test_a_broken_escape_is_one_line(tmp_path):
  (tmp_path / "t.txt").write_text("a b", encoding="utf-8")
  with pytest.raises(UserError, match=r"--separator='\\\\q\\\\x' has a broken escape"):
    prep.prepare(str(tmp_path / "t.txt"), "char", str(tmp_path / "out"), separator="\\q\\x",
                 workers=0, progress=False)


def test_bpe_train_never_sees_validation_text(tmp_path, monkeypatch):
  """The first document is the val split's (--val=1), long enough to be read in several pieces;
  past its first piece it repeats a string of letters no training document has. The BPE trained
  on the training documents has no token holding any of those letters (before the fix, the val
  document's continuation pieces went into the sample and 'zqxj' became tokens)."""
  monkeypatch.setattr(prep, "READ_BYTES", 256)  # small reads and pieces: a document of many
  monkeypatch.setattr(prep, "BATCH_CHARS", 600)
  secret = "zqxj"
  val_doc = "the cat sat on the mat. " * 40 + (secret * 3 + " ") * 200
  train_docs = [f"the dog sat on the log {i}. a bird sang in the tree. " * 30 for i in range(6)]
  (tmp_path / "t.txt").write_text("\n\n".join([val_doc] + train_docs), encoding="utf-8")
  m = prep.prepare(str(tmp_path / "t.txt"), "bpe:train:300", str(tmp_path / "out"),
                   separator="\\n\\n", val="1", workers=0, progress=False)
  assert m["splits"]["val"]["documents"] == 1 and m["splits"]["train"]["documents"] == 6
  tok = prep.load_tokenizer(tmp_path / "out", m["tokenizer"])
  pieces = [tok.encoding.decode_single_token_bytes(i) for i in range(256, tok.vocab_size)
            if i not in tok.encoding._special_tokens.values()]
  assert len(pieces) > 20  # merges were learned (from the training documents)
  assert not [p for p in pieces if set(p.decode("utf-8", "replace")) & set(secret)]
  assert len(tok.encode(secret)) == len(secret)  # one byte a token: never merged
