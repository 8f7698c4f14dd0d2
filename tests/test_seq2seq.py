"""Seq2seq tasks: the data and its splits, the tokenizer, bad input, and a tiny transformer learning
`copy` through the real training loop, then scored by `llm-jax evaluate`."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from llm_jax import decoding
from llm_jax.config import default_config, validate
from llm_jax.data.seq2seq import encode_sources, load_seq2seq_data
from llm_jax.data.tokenizers import Seq2SeqTokenizer
from llm_jax.errors import UserError
from llm_jax.generate import generate_text
from llm_jax.training.workdir import load_run
from llm_jax.training import workdir as workdir_lib
from llm_jax.training.loop import train_and_evaluate

ROOT = pathlib.Path(__file__).parent.parent
TARGET_OF = {"copy": lambda s: s, "reverse": lambda s: s[::-1],
             "sort": lambda s: "".join(sorted(s)),
             "add": lambda s: str(int(s.split("+")[0]) + int(s.split("+")[1]))}
# a repeated source, a blank line, a CRLF, a tab inside a target, an empty target
PAIRS = "ab\tx\nab\ty\n\ncd\tdc\r\nefg\tgfe\nh\th\nij\tj\ti\nk\t\n"


def s2s_config(task="copy", **data):
  """A transformer small enough to compile in a second or two, on a generated task."""
  c = default_config()
  c.parallel = "none"
  c.model.update(name="transformer", n_layer=1, n_head=2, n_embd=32, block_size=6, norm="post",
                 pos="sinusoidal", activation="relu", use_bias=True)
  c.data.update(task=task, min_length=1, max_length=4, num_examples=3000, heldout_examples=100)
  c.data.update(data)
  return c


def load(c):
  validate(c)
  return load_seq2seq_data(c.data, c.model.block_size, c.seed)


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "add", "pairs_file"])
def test_tasks_are_right_reproducible_and_their_splits_disjoint(task, tmp_path):
  if task == "pairs_file":
    (tmp_path / "pairs.tsv").write_text(PAIRS, encoding="utf-8")
    c = s2s_config(task, path=str(tmp_path / "pairs.tsv"), heldout_examples=1)
  else:
    c = s2s_config(task, min_length=2, max_length=3 if task == "add" else 5)
    c.model.block_size = 7
  data = load(c)
  sources = {name: {s for s, _ in pairs} for name, pairs in data.pairs.items()}
  assert not (sources["train"] & sources["val"] or sources["train"] & sources["test"] or
              sources["val"] & sources["test"])
  assert len(sources["val"]) == len(sources["test"]) == c.data.heldout_examples
  every = [p for pairs in data.pairs.values() for p in pairs]
  if task == "pairs_file":
    assert sorted(every) == sorted(tuple(l.rstrip("\r").split("\t", 1))
                                   for l in PAIRS.split("\n") if l.strip())
  else:
    assert len(every) == len(set(every)) == c.data.num_examples
    assert all(t == TARGET_OF[task](s) for s, t in every)
    assert all(2 <= len(o) <= c.data.max_length for s, _ in every for o in s.split("+"))
  assert load(c).pairs == data.pairs  # a function of the seed
  c.seed += 1
  assert task == "pairs_file" or load(c).pairs["train"] != data.pairs["train"]
  # teacher forcing: BOS + target in, target + EOS out, weights on the real positions only
  tok = data.tokenizer
  for name, pairs in data.pairs.items():
    a = data.arrays[name]
    for (source, target), x, y_in, y, w in zip(pairs, a["inputs"], a["decoder_inputs"],
                                               a["targets"], a["weights"]):
      assert tok.decode(x) == source and tok.decode(y) == target
      assert y_in[0] == tok.BOS and tok.decode(y_in[1:]) == target
      assert y[len(target)] == tok.EOS and w.sum() == len(target) + 1 and w[len(target)] == 1


def test_the_tokenizer_round_trips_through_tokenizer_json(tmp_path):
  tok = load(s2s_config("add", max_length=2)).tokenizer
  assert tok.vocab_size == 3 + 11  # PAD, BOS, EOS, the digits and '+'
  workdir_lib.write_run_files(tmp_path, s2s_config("add"), tok)
  again = workdir_lib.read_tokenizer(tmp_path)
  assert isinstance(again, Seq2SeqTokenizer) and again.chars == tok.chars == "+0123456789"
  ids = again.encode("12+9")
  assert ids.min() >= 3 and again.decode(ids) == "12+9"
  assert again.decode([tok.BOS, *ids, tok.EOS, *ids, tok.PAD]) == "12+9"  # stops at EOS


def test_a_workdir_of_another_task_is_refused():
  with pytest.raises(UserError, match="config.data.task='reverse' differs"):
    workdir_lib.check_same_run(s2s_config("reverse"), s2s_config("copy"))


@pytest.mark.parametrize("pairs,change,words", [
    ("", {}, "holds no source<TAB>target line"),
    ("\n\n  \n", {}, "holds no source<TAB>target line"),
    ("ab\tba\ncd\tdc\nno tab here\n", {}, r"pairs.tsv, line 3: no tab"),
    ("ab\tba\nabcdefghi\tx\n", {}, r"pairs.tsv, line 2: the source has 9 characters, more "
                                   r"than model.block_size=6"),
    ("ab\tba\nx\tabcdefghi\n", {}, r"line 2: the target has 9 characters"),
    ("ab\tba\ncd\tdc\n", {"heldout_examples": 1}, "heldout_examples=1 leaves no training"),
    # (these two are validation's now, before anything is generated)
    (None, {"task": "copy", "max_length": 9}, r"config.data.max_length=9 is invalid: .*lower "
                                              r"data.max_length or raise model.block_size"),
    (None, {"task": "copy", "max_length": 1, "num_examples": 300},
     "config.data.num_examples=300 is invalid: task 'copy' has 26 distinct examples"),
    (None, {"task": ""}, "config.data.task='' is invalid"),
    (None, {"task": "copy", "tokenizer": "tiktoken:cl100k_base"}, "character-level"),
    (None, {"task": "copy", "num_examples": 200}, "config.data.num_examples=200 is invalid"),
    (None, {"task": "pairs_file"}, "pass --config.data.path"),
], ids=["empty", "blank", "no-tab", "long-source", "long-target", "too-few", "long-task",
        "small-task", "no-task", "tokenizer", "no-train", "no-path"])
def test_bad_input_is_one_line_naming_the_fix(tmp_path, pairs, change, words):
  c = s2s_config("pairs_file", path="")
  if pairs is not None:
    (tmp_path / "pairs.tsv").write_text(pairs, encoding="utf-8")
    c.data.path = str(tmp_path / "pairs.tsv")
  c.data.update(change)
  with pytest.raises(UserError, match=words) as e:
    load(c)
  assert "\n" not in str(e.value)


def test_a_language_model_refuses_a_task():
  c = default_config()
  c.data.task = "copy"
  with pytest.raises(UserError, match="config.data.task='copy' is invalid"):
    validate(c)


def test_a_source_too_long_for_a_trained_model_is_refused():
  tok = Seq2SeqTokenizer("abc")
  assert encode_sources(tok, ["ab", "abc"], 3).tolist() == [[3, 4, 0], [3, 4, 5]]
  with pytest.raises(UserError, match="--prompt: the source has 4 characters, more than "
                                      "model.block_size=3"):
    encode_sources(tok, ["abca"], 3, name="--prompt")


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
  """A 1+1-layer transformer trained on copy (strings of 1-4 letters) by the real loop."""
  c = s2s_config("copy", heldout_examples=200)
  c.train.update(batch_size=64, max_steps=300, lr_decay_steps=300, warmup_steps=20,
                 learning_rate=3e-3, weight_decay=0.0, eval_interval=300, eval_iters=4,
                 log_interval=50, checkpoint_every=300, sample_tokens=1)
  workdir = tmp_path_factory.mktemp("copy") / "run"
  summary = train_and_evaluate(c, str(workdir))
  return workdir, summary


def test_a_tiny_transformer_learns_copy(copy_run):
  workdir, summary = copy_run
  last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["step"] == 300 and last["val_exact_match"] == 1.0, last
  assert "(expected" not in summary["sample"] and " -> " in summary["sample"]
  assert generate_text(workdir, "dcab") == ["dcab"]


def test_on_the_test_split_beam_size_1_is_greedy_and_right(copy_run):
  config, tok, model, params, _ = load_run(copy_run[0])
  test = load_seq2seq_data(config.data, config.model.block_size, config.seed, tok).arrays["test"]
  kw = dict(max_len=test["targets"].shape[1], bos_id=tok.BOS, eos_id=tok.EOS)
  greedy = decoding.greedy_decode(model, params, test["inputs"], **kw)
  beam, _ = decoding.beam_search(model, params, test["inputs"], beam_size=1, alpha=0.6, **kw)
  np.testing.assert_array_equal(beam, greedy)
  assert decoding.match_scores(greedy, test["targets"], test["weights"])["exact_match"] == 1.0


def test_the_evaluate_command_prints_the_scores_and_exits_2_on_a_missing_run(copy_run, tmp_path):
  cmd = [sys.executable, "-m", "llm_jax", "evaluate", f"--workdir={copy_run[0]}", "--split=test"]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 0, r.stderr
  line, json_line = r.stdout.strip().splitlines()
  assert "exact match 100.00%" in line and "test split" in line
  assert json.loads(json_line)["exact_match"] == 1.0
  r = subprocess.run(cmd[:4] + [f"--workdir={tmp_path / 'nowhere'}"], capture_output=True,
                     text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 2 and "does not exist" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
