"""`llm-jax prepare` of text files (data/prepare.py): separators are UTF-8 text with escapes, a
BPE learns from training text alone. A text corpus, prepared on first use: the batches of the
same text prepared by `llm-jax prepare`, nanoGPT's split, two processes at once (the cache's
reuse: test_tokenizers.py)."""

import numpy as np
import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.config import validate
from llm_jax.data import prepare as prep
from llm_jax.data.prepared import PreparedData
from llm_jax.data.tokenizers import CharTokenizer
from llm_jax.errors import UserError
from llm_jax.training.tasks import build_task


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


# --- a text corpus (data.corpus text_file, the plays), prepared into the data dir on first use

def batches(task, steps=3):
  out = [task.train_batch(s) for s in range(steps)] + list(task.eval_batches.values())
  return [{k: np.asarray(v) for k, v in b.items()} for b in out]


def test_a_text_corpus_gives_the_batches_of_its_text_prepared_by_llm_jax_prepare(tmp_path):
  """corpus text_file and `llm-jax prepare` of the same text, its split as two files (the val
  part first: --val=1), train on the same tokenizer, batches and bits per byte; the text corpus's
  split holds the last 10% of its tokens (a character a token)."""
  text = TOY_TEXT.replace("sea.", "séa.")  # a character past ASCII: counted in bytes apart
  (tmp_path / "toy.txt").write_text(text, encoding="utf-8")
  config = tiny_config(tmp_path / "toy.txt")
  config.data.data_dir = str(tmp_path / "data")
  auto = build_task(config)
  cut = int(len(text) * 0.9)
  (tmp_path / "parts").mkdir()
  (tmp_path / "parts" / "0.txt").write_text(text[cut:], encoding="utf-8")
  (tmp_path / "parts" / "1.txt").write_text(text[:cut], encoding="utf-8")
  prep.prepare(str(tmp_path / "parts" / "*.txt"), "char", str(tmp_path / "by_prepare"), val="1",
               workers=0, progress=False)
  by_prepare = config.copy_and_resolve_references()
  by_prepare.data.corpus, by_prepare.data.path = "prepared", str(tmp_path / "by_prepare")
  prepared = build_task(by_prepare)
  assert auto.tokenizer.to_dict() == prepared.tokenizer.to_dict()
  for a, b in zip(batches(auto), batches(prepared), strict=True):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert auto.eval_metrics(None, {"val": 1.0}) == prepared.eval_metrics(None, {"val": 1.0})
  for c in (config, by_prepare):  # one sampler: the epoch one too
    c.data.sampling = "epoch"
    validate(c)
  for a, b in zip(batches(build_task(config)), batches(build_task(by_prepare)), strict=True):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  # the split: [end of text] + the first 90% of the tokens, [end of text] + the last 10%
  root, _ = prep.prepare_text_corpus(config.data)  # (the folder auto read)
  data = PreparedData(root, 16)
  ids, eot = auto.tokenizer.encode(text).tolist(), auto.tokenizer.chars.index(prep.CHAR_EOT)
  streams = {s: data.streams[s].read(0, len(data.streams[s])).tolist() for s in ("train", "val")}
  assert streams == {"train": [eot] + ids[:int(len(ids) * 0.9)],
                     "val": [eot] + ids[int(len(ids) * 0.9):]}


def test_two_processes_preparing_one_text_keep_the_first_rename(tmp_path):
  """The loser of two prepares of one text (its rename finds the winner's folder) uses it and
  leaves nothing behind; a folder of something else in the way is one line."""
  tok = CharTokenizer.from_text(TOY_TEXT + prep.CHAR_EOT)
  parts, desc = (TOY_TEXT[:500], TOY_TEXT[500:600]), {"spec": "test", "files": []}
  root = tmp_path / "cache" / "toy"
  first = prep.write_text_dataset(root, parts, tok, desc)
  written = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
  assert prep.write_text_dataset(root, parts, tok, desc) == first  # the loser's rename fails
  assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == written
  assert [p.name for p in root.parent.iterdir()] == ["toy"]  # the loser's copy deleted
  (root / "manifest.json").unlink()
  with pytest.raises(UserError, match=r"toy is in the way of a prepared corpus .*: delete it"):
    prep.write_text_dataset(root, parts, tok, desc)


def test_a_tokenizer_without_an_end_of_text_token_prepares_the_text_alone(tmp_path):
  """A character vocabulary without CHAR_EOT (a run started before text corpora were prepared,
  resumed): its documents start with no end-of-text token, the ids are the text's."""
  tok = CharTokenizer.from_text(TOY_TEXT)
  m = prep.write_text_dataset(tmp_path / "d", (TOY_TEXT[:500], TOY_TEXT[500:600]), tok,
                              {"spec": "test", "files": []})
  train = PreparedData(tmp_path / "d", 16, expected_tokenizer=tok).streams["train"]
  assert m["tokenizer"]["eot"] is None
  assert train.read(0, len(train)).tolist() == tok.encode(TOY_TEXT[:500]).tolist()
