"""The byte-level BPE trainer (llm_jax/data/bpe.py), its files, `llm-jax bpe`, and BPE runs."""

import collections
import json
import math
import pathlib
import subprocess
import sys

import pytest
import regex
import tiktoken.load

from conftest import tiny_config
from llm_jax.data import bpe
from llm_jax.data.tokenizers import CharTokenizer, make_tokenizer
from llm_jax.errors import UserError
from llm_jax.training import workdir as workdir_lib
from llm_jax.training.loop import train_and_evaluate

ROOT = pathlib.Path(__file__).parent.parent
# a few kB of English to learn from, and a held-out passage in the same style
TRAIN_TEXT = """\
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of
Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we
had everything before us, we had nothing before us, we were all going direct to Heaven, we were
all going direct the other way. There were a king with a large jaw and a queen with a plain face,
on the throne of England; there were a king with a large jaw and a queen with a fair face, on the
throne of France. In both countries it was clearer than crystal to the lords of the State
preserves of loaves and fishes, that things in general were settled for ever.
""" * 3 + """\
The sun shone, having no alternative, on the nothing new. Call me Ishmael. Some years ago, never
mind how long precisely, having little or no money in my purse, and nothing particular to interest
me on shore, I thought I would sail about a little and see the watery part of the world. 12345
6789 1,000,000 -- don't, won't, can't; it's they're we've I'm you'll he'd.
"""
HELD_OUT = """\
It was the season of wisdom and the winter of belief; we were all going to the throne of the
world, and there were things in general that were settled before us, having nothing to interest
the lords of England or France. Some years ago I thought it was the best of times.
"""
UNICODE = [
    "", "a", " ", "\n\n\n", "  leading and trailing  ",
    "emoji 🎭👩‍👩‍👧‍👦🏳️‍🌈 done",  # joiners and variation selectors
    "combining: e\u0301 a\u0308 \u1100\u1161\u11a8 Z\u0351\u0353",  # marks, Hangul jamo
    "中文字符和日本語のテキスト、한국어",
    # characters whose code points look like bytes of broken UTF-8, and mojibake
    "mojibake Ã©Ã¨ Ã¢â‚¬â„¢ \ufffd\ufffd and bytes-like \xff\xfe\x80\xc0",
    "nul \x00 and controls \x01\x7f\x9f", "<|endoftext|> <|pad|> looks special",
    "\t tabs\r\nCRLF\u2028line sep \u00a0nbsp", "1234567890 3.14159 -42e10",
    "\U0010FFFF\U0001F600",  # the last code point, an astral one
]


def reference_bpe(text: str, vocab_size: int) -> dict[bytes, int]:
  """Textbook BPE: recount every pair of every pre-token before each merge (slow, obviously right),
  with the trainer's tie rule (highest count, then the smallest pair of ids)."""
  counts = collections.Counter(regex.findall(bpe.PATTERN, text))
  words = [(list(w.encode()), n) for w, n in counts.items()]
  vocab = [bytes([b]) for b in range(256)]
  while len(vocab) < vocab_size - len(bpe.SPECIAL_TOKENS):
    pairs = collections.Counter()
    for ids, n in words:
      for pair in zip(ids, ids[1:]):
        pairs[pair] += n
    if not pairs:
      break
    (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    merged = vocab[a] + vocab[b]
    new = vocab.index(merged) if merged in vocab else len(vocab)
    if new == len(vocab):
      vocab.append(merged)
    for k, (ids, n) in enumerate(words):
      out, i = [], 0
      while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == (a, b):
          out.append(new)
          i += 2
        else:
          out.append(ids[i])
          i += 1
      words[k] = (out, n)
  return {tok: i for i, tok in enumerate(vocab)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 400-token BPE (140 merges) trained on TRAIN_TEXT, saved, loaded as a tokenizer."""
  path = tmp_path_factory.mktemp("bpe") / "toy.tiktoken"
  bpe.save_bpe(path, bpe.train_bpe(TRAIN_TEXT, 400))
  return path, make_tokenizer(f"bpe:{path}", "")


def test_incremental_counts_match_a_full_recount_each_merge():
  assert bpe.train_bpe(TRAIN_TEXT, 330) == reference_bpe(TRAIN_TEXT, 330)


def test_ranks_are_bytes_then_merges_then_special_tokens(trained):
  path, tok = trained
  ranks = bpe.read_ranks(path)
  assert len(ranks) == 396 and sorted(ranks.values()) == list(range(396))
  assert all(ranks[bytes([b])] == b for b in range(256))
  assert all(len(t) > 1 for t, r in ranks.items() if r >= 256)
  assert tok.vocab_size == 400
  for i, special in enumerate(bpe.SPECIAL_TOKENS):
    assert tok.encoding.encode(special, allowed_special="all") == [396 + i]
  # the first merge is the most frequent pair of bytes within the pre-tokens
  pairs = collections.Counter(p for w in regex.findall(bpe.PATTERN, TRAIN_TEXT)
                              for p in zip(w.encode(), w.encode()[1:]))
  (a, b), _ = pairs.most_common(1)[0]
  assert ranks[bytes([a, b])] == 256


def test_the_file_is_tiktoken_format(trained, monkeypatch):
  path, _ = trained
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's loader, without its cache
  assert tiktoken.load.load_tiktoken_bpe(str(path)) == bpe.read_ranks(path)
  side = json.loads(bpe.sidecar_path(path).read_text())
  assert side["pattern"] == bpe.PATTERN and list(side["special_tokens"]) == list(bpe.SPECIAL_TOKENS)


def test_training_is_deterministic(tmp_path):
  for name in ("a", "b"):
    bpe.save_bpe(tmp_path / f"{name}.tiktoken", bpe.train_bpe(TRAIN_TEXT, 360))
  for suffix in (".tiktoken", ".tiktoken.json"):
    assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


@pytest.mark.floors
@pytest.mark.parametrize("text", UNICODE)
def test_round_trip_on_any_unicode(trained, text):
  _, tok = trained
  ids = tok.encode(text)
  assert ids.dtype.name == "int32" and (ids.size == 0 or 0 <= ids.min() <= ids.max() < 396)
  assert tok.decode(ids) == text


def test_compresses_held_out_text_better_than_characters(trained):
  _, tok = trained
  n_tokens = len(tok.encode(HELD_OUT))
  assert n_tokens < 0.6 * len(HELD_OUT), (n_tokens, len(HELD_OUT))


def test_a_small_text_stops_when_nothing_is_left_to_merge():
  # pairs: ab x3, then a tie of (' ', ab) and (ab, ab) broken by the smaller ids, then nothing
  ranks = bpe.train_bpe("abab ab", 1000)
  assert len(ranks) == 259 and (ranks[b"ab"], ranks[b" ab"], ranks[b"abab"]) == (256, 257, 258)


def test_a_rank_file_without_sidecar_gets_the_defaults(trained, tmp_path):
  path, tok = trained
  bare = tmp_path / "bare.tiktoken"
  bare.write_bytes(path.read_bytes())
  enc = bpe.load_bpe(bare)
  assert enc.n_vocab == 400 and enc.encode_ordinary(HELD_OUT) == tok.encode(HELD_OUT).tolist()


def test_bad_files_and_sizes_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="too small"):
    bpe.train_bpe("abc", 100)
  bad = tmp_path / "bad.tiktoken"
  bad.write_text("not a rank file\n")
  with pytest.raises(UserError, match="line 1"):
    bpe.load_bpe(bad)


def llm_jax(*args):
  return subprocess.run([sys.executable, "-m", "llm_jax", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_bpe_command_writes_a_rank_file(tmp_path):
  (tmp_path / "a.txt").write_text(TRAIN_TEXT[:2000])
  (tmp_path / "b.txt").write_text(TRAIN_TEXT[2000:])
  out = tmp_path / "out" / "toy.tiktoken"
  r = llm_jax("bpe", f"--corpus={tmp_path}/*.txt", "--vocab_size=300", f"--out={out}")
  assert r.returncode == 0, r.stderr
  assert "40 merges" in r.stdout and f"bpe:{out}" in r.stdout
  # the files of a glob, joined in sorted order: the same ranks as training on the whole text
  assert bpe.read_ranks(out) == bpe.train_bpe(TRAIN_TEXT, 300)
  assert bpe.sidecar_path(out).is_file()


@pytest.mark.parametrize("args,expect", [
    (["--vocab_size=100"], "--vocab_size=100 is too small"),
    (["--vocab_size=many"], "--vocab_size=many"),
    (["--vocab_size=300", "--corpus=/nonexistent/*.txt"], "matches no file"),
])
def test_bpe_command_errors_are_one_line_and_exit_2(tmp_path, args, expect):
  (tmp_path / "a.txt").write_text(TRAIN_TEXT)
  r = llm_jax("bpe", f"--corpus={tmp_path / 'a.txt'}", f"--out={tmp_path / 'x.tiktoken'}", *args)
  assert r.returncode == 2 and expect in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_bpe_run_logs_bits_per_byte_and_refuses_another_tokenizer(trained, tmp_path):
  """A GPT on BPE tokens trains and logs val_bpb; a char workdir refuses a BPE config (and back)."""
  path, tok = trained
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(TRAIN_TEXT + HELD_OUT)
  c = tiny_config(corpus, max_steps=2, eval_interval=2, checkpoint_every=2, log_interval=2)
  c.data.data_dir = str(tmp_path / "data")
  c.data.tokenizer = f"bpe:{path}"
  s = train_and_evaluate(c, str(tmp_path / "bpe_run"))
  assert s["step"] == 2
  evals = [json.loads(l) for l in (tmp_path / "bpe_run" / "metrics.jsonl").read_text().splitlines()]
  evals = [e for e in evals if "val_bpb" in e]
  val_text = (TRAIN_TEXT + HELD_OUT)[int(len(TRAIN_TEXT + HELD_OUT) * 0.9):]
  # the val split is prepared as one document: its tokens and the end-of-text token before it
  ratio = (len(tok.encode(val_text)) + 1) / len(val_text.encode())
  assert [e["step"] for e in evals] == [0, 2]
  for e in evals:
    assert e["val_bpb"] == pytest.approx(e["val_loss"] / math.log(2) * ratio)
  # the run's tokenizer.json rebuilds the same encoding, for resuming and generation
  saved = workdir_lib.read_tokenizer(tmp_path / "bpe_run")
  assert saved.to_dict() == tok.to_dict() and saved.encode(HELD_OUT).tolist() == \
      tok.encode(HELD_OUT).tolist()
  # the same workdir with the char tokenizer, and a char workdir with the BPE: one-line refusals
  char = tiny_config(corpus)
  with pytest.raises(UserError) as e:
    train_and_evaluate(char, str(tmp_path / "bpe_run"))
  assert "config.data.tokenizer='char' differs" in str(e.value) and "\n" not in str(e.value)
  (tmp_path / "char_run").mkdir()
  workdir_lib.write_run_files(tmp_path / "char_run", char, CharTokenizer.from_text("abc"))
  with pytest.raises(UserError) as e:
    train_and_evaluate(c, str(tmp_path / "char_run"))
  assert f"config.data.tokenizer='bpe:{path}' differs" in str(e.value) and "\n" not in str(e.value)


def test_bpe_train_spec_trains_on_the_training_split_once(tmp_path, capsys):
  tok = make_tokenizer("bpe:train:300", TRAIN_TEXT, str(tmp_path))
  files = sorted(p.name for p in (tmp_path / "bpe").iterdir())
  assert len(files) == 2 and "training a BPE" in capsys.readouterr().out
  train_part = TRAIN_TEXT[:int(len(TRAIN_TEXT) * 0.9)]
  assert bpe.read_ranks(tok.source["path"]) == bpe.train_bpe(train_part, 300)
  again = make_tokenizer("bpe:train:300", TRAIN_TEXT, str(tmp_path))  # cached: no training
  assert "training" not in capsys.readouterr().out and again.source == tok.source
