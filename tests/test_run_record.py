"""A run's record survives what a user types: re-running a finished run changes none of its files,
and a checkpoint step with damaged files (its metadata as well as its arrays) is named in a warning
and skipped for the newest good one, by train, generate and evaluate alike.

One tiny run is trained once for the module; each test works on its own copy.
"""

import glob
import json
import os
import shutil

import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.training.loop import train_and_evaluate
from test_bad_inputs import run_cli
from test_faults import files_digest, write_config_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished run of 4 steps with checkpoints at steps 2 and 4, and its config file."""
  d = tmp_path_factory.mktemp("record")
  (d / "toy.txt").write_text(TOY_TEXT, encoding="utf-8")
  c = tiny_config(d / "toy.txt", max_steps=4, lr_decay_steps=20, checkpoint_every=2,
                  eval_interval=2, log_interval=2)
  train_and_evaluate(c, str(d / "run"))
  write_config_file(c, d / "config.py")
  return d


@pytest.fixture
def run(trained, tmp_path):
  """A copy of the trained run, to change freely."""
  shutil.copytree(trained / "run", tmp_path / "run")
  return tmp_path / "run"


def train(trained, workdir, *overrides):
  return run_cli("train", f"--config={trained}/config.py", f"--workdir={workdir}", *overrides)


def test_a_finished_run_is_read_only_to_train_and_raising_max_steps_continues_it(trained, run):
  before = files_digest(run)
  best = json.loads((run / "summary.json").read_text())["best_val_loss"]

  code, out, err = train(trained, run)  # the same config: done, nothing written
  assert code == 0 and "Traceback" not in err, err
  assert f"is done: step 4 of train.max_steps=4, best val loss {best:.4f}" in out
  assert files_digest(run) == before  # no summary, config, metrics or event file rewritten or added

  code, out, err = train(trained, run, "--config.train.learning_rate=3e-4")
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and "config.train.learning_rate=0.0003 differs" in lines[0]
  assert "finished run (step 4)" in lines[0] and "--config.train.max_steps" in lines[0]
  assert files_digest(run) == before

  code, out, err = train(trained, run, "--config.train.max_steps=6")  # continues to step 6
  assert code == 0 and "resuming at step 4" in out, err
  after = files_digest(run)
  summary = json.loads((run / "summary.json").read_text())
  assert summary["step"] == 6 and summary["val_loss"] is not None and summary["wall_s"] > 0
  assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 6
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] == 6 and steps == sorted(steps)
  changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
  assert {"summary.json", "config.json", "metrics.jsonl"} <= changed
  assert any(p.startswith("checkpoints/6/") for p in changed)
  # the checkpoint of step 4 is the one written by the first run, untouched
  assert all(after[p] == h for p, h in before.items() if p.startswith("checkpoints/4/"))
  assert (run / "tokenizer.json").read_bytes() == (trained / "run" / "tokenizer.json").read_bytes()

  code, out, err = train(trained, run, "--config.train.max_steps=6")  # and now it is done again
  assert code == 0 and "is done: step 6" in out and files_digest(run) == after


# Every kind of file an Orbax step holds (orbax 0.12, OCDBT): the step's own metadata and commit
# marker, the JSON item `meta`, and the PyTree item `state` (its tree metadata, sharding, the
# OCDBT manifests, the array metadata and the compressed data files).
STEP_FILES = ["_CHECKPOINT_METADATA", "commit_success.txt", "meta/metadata", "state/_METADATA",
              "state/_sharding", "state/manifest.ocdbt", "state/ocdbt.process_0/manifest.ocdbt",
              "state/ocdbt.process_0/d/*", "state/array_metadatas/process_0", "state/d/*",
              "meta", "state"]
# without these, step 4 cannot be what was saved: it must be skipped
ESSENTIAL = {"meta/metadata", "state/_METADATA", "state/manifest.ocdbt", "state/d/*",
             "state/ocdbt.process_0/d/*", "meta", "state"}


# also overwritten with garbage (JSON and manifests that parse or not)
GARBLED = {"_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/_sharding",
           "state/manifest.ocdbt"}


def damage(workdir, pattern, how):
  """Deletes, or overwrites with garbage, the files of checkpoint step 4 matching pattern."""
  paths = glob.glob(str(workdir / "checkpoints" / "4" / pattern))
  assert paths, pattern
  for p in paths:
    if how == "delete":
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    else:
      with open(p, "wb") as f:
        f.write(b"garbage")


def evaluated_step(workdir):
  code, out, err = run_cli("evaluate", f"--workdir={workdir}")
  assert code == 0 and "Traceback" not in err, (code, err)
  return json.loads(out.strip().splitlines()[-1]), err


def test_a_step_with_any_file_damaged_is_skipped_or_read_whole_by_evaluate(trained, tmp_path):
  intact, _ = evaluated_step(trained / "run")
  assert intact["step"] == 4
  older, _ = evaluated_step(_with_step_2_only(trained, tmp_path))
  fell_back = set()
  for pattern in STEP_FILES:
    for how in ("delete", "garbage") if pattern in GARBLED else ("delete",):
      w = tmp_path / f"{how}_{pattern.replace('/', '_').replace('*', 'all')}"
      shutil.copytree(trained / "run", w)
      damage(w, pattern, how)
      result, err = evaluated_step(w)
      if result["step"] == 2:  # skipped, named in a warning, and the older step read whole
        assert f"checkpoint {w}/checkpoints/4 is damaged" in err, (pattern, how, err)
        assert "another model" not in err and result == older, (pattern, how)
        fell_back.add(pattern)
      else:  # a file Orbax does not need: the step reads as it was saved
        assert result == intact, (pattern, how, result)
  assert ESSENTIAL <= fell_back, ESSENTIAL - fell_back


def _with_step_2_only(trained, tmp_path):
  w = tmp_path / "step2"
  shutil.copytree(trained / "run", w)
  shutil.rmtree(w / "checkpoints" / "4")
  return w


@pytest.mark.parametrize("pattern", ["state/_METADATA", "meta/metadata", "state/d/*"])
def test_generate_and_train_skip_a_step_whose_metadata_or_data_is_missing(trained, run, pattern):
  damage(run, pattern, "delete")
  code, out, err = run_cli("generate", f"--workdir={run}", "--prompt=the", "--max_new_tokens=5",
                           "--greedy")
  assert code == 0 and f"checkpoint {run}/checkpoints/4 is damaged" in err, err
  assert "another model" not in err and out.startswith("the")
  # train: the same warning, then step 4 moved aside and trained again from step 2
  code, out, err = train(trained, run)
  assert code == 0 and f"checkpoint {run}/checkpoints/4 is damaged" in err, err
  assert "resuming at step 2" in out and (run / "checkpoints_corrupt" / "4").is_dir()
  assert json.loads((run / "summary.json").read_text())["step"] == 4
  assert evaluated_step(run)[0]["step"] == 4


def test_the_tests_keep_their_caches_out_of_the_home_folder(tmp_path):
  """Prepared text corpora (data.data_dir, by default ~/.cache/llm_jax), measured peaks and
  compiled programs go to the session's temporary folders (conftest.py)."""
  import pathlib
  import tempfile
  from llm_jax.data import bpe, corpora, prepare
  home, tmp = pathlib.Path.home().resolve(), pathlib.Path(tempfile.gettempdir()).resolve()
  for var in ("LLM_JAX_DATA_DIR", "LLM_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"):
    path = pathlib.Path(os.environ[var]).resolve()
    assert path.is_relative_to(tmp) and not (path.is_relative_to(home) and home != tmp), var
  bpe.train_to_file(TOY_TEXT, bpe.MIN_VOCAB_SIZE, tmp_path / "toy.tiktoken")
  (tmp_path / "toy.txt").write_text(TOY_TEXT)
  c = tiny_config(tmp_path / "toy.txt").data  # data.data_dir '' as every test config leaves it
  c.tokenizer = f"bpe:{tmp_path / 'toy.tiktoken'}"
  path, _ = prepare.prepare_text_corpus(c)
  assert (path / "manifest.json").is_file()
  assert path.resolve().is_relative_to(corpora.data_dir().resolve())
  assert corpora.data_dir().resolve() == pathlib.Path(os.environ["LLM_JAX_DATA_DIR"]).resolve()
