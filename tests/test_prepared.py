"""Training from a prepared dataset (data/prepared.py): windows across shards, the epoch sampler,
rows read lazily per device (and per process: 2 processes x 2 devices), exact resume after
kill -9, and the checks (damaged shard, another tokenizer, another dataset). Making the
datasets: test_prepare.py."""

import importlib.util
import json
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.data import prepare as prep
from llm_jax.data import prepared as pd
from llm_jax.errors import UserError
from llm_jax.training.loop import train_and_evaluate

ROOT = pathlib.Path(__file__).parent.parent


def toy_docs():
  """TOY_TEXT's sentences as documents."""
  return [s.strip() + "." for s in TOY_TEXT.split(".") if s.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """TOY_TEXT's sentences as JSON lines and as text files, prepared with the char tokenizer in
  shards of 97 tokens (windows of 17 cross them often)."""
  tmp = tmp_path_factory.mktemp("prepared")
  docs = toy_docs()
  with open(tmp / "docs.jsonl", "w") as f:
    for d in docs:
      f.write(json.dumps({"text": d}) + "\n")
  (tmp / "txt").mkdir()
  for i, d in enumerate(docs):
    (tmp / "txt" / f"{i:04d}.txt").write_text(d)
  for name, src in (("a", tmp / "docs.jsonl"), ("b", tmp / "txt" / "*.txt")):
    prep.prepare(str(src), "char", str(tmp / name), val="0.1", shard_tokens=97, workers=0,
                 progress=False)
  return tmp


def config_for(path, **train):
  c = tiny_config("unused", **train)
  c.data.corpus, c.data.path = "prepared", str(path)
  return c


def metrics(workdir):
  return [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def losses(workdir):
  return {r["step"]: r["loss"] for r in metrics(workdir) if "loss" in r}


# ---------------------------------------------------------------------------------- reading


def test_a_split_reads_as_one_array_across_its_shards(data):
  m = pd.read_manifest(data / "a")
  shards = m["splits"]["train"]["shards"]
  assert len(shards) > 5
  whole = np.concatenate([np.fromfile(data / "a" / s["file"], m["dtype"]) for s in shards])
  stream = pd.TokenStream(data / "a", shards, m["dtype"])
  rng = np.random.default_rng(0)
  for start in [0, 96, 97, 193, len(whole) - 300] + rng.integers(0, len(whole) - 300, 20).tolist():
    np.testing.assert_array_equal(stream.read(start, 300), whole[start:start + 300])
  starts = np.concatenate([rng.integers(0, len(whole) - 40, 200), stream.offsets[1:-1] - 7])
  np.testing.assert_array_equal(stream.windows(starts, 40), whole[starts[:, None] + np.arange(40)])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_the_permutation_is_a_bijection_of_its_range(n):
  for key in (1, 2):
    p = pd.permute(np.arange(n), n, key)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
  if n > 5:
    assert (pd.permute(np.arange(n), n, 1) != pd.permute(np.arange(n), n, 2)).any()


def test_the_epoch_sampler_visits_every_window_once_per_epoch(data):
  d = pd.PreparedData(data / "a", 16, "epoch")
  n, per_step = d.n_windows, 2 * 7  # a batch that does not divide the window count
  steps = (5 * n // 2) // per_step  # two and a half epochs
  starts = np.concatenate([d.starts("train", 3, s, per_step, pd.TRAIN_STREAM)
                           for s in range(steps)])
  windows = starts // 16
  assert (starts % 16 == 0).all()
  for e in range(2):
    np.testing.assert_array_equal(np.sort(windows[e * n:(e + 1) * n]), np.arange(n))
  assert (windows[:n] != windows[n:2 * n]).any()  # each epoch its own order
  # a pure function of (seed, step), the same at every call
  np.testing.assert_array_equal(d.starts("train", 3, 4, per_step, 0),
                                starts[4 * per_step:5 * per_step])


def test_a_batch_reads_only_the_rows_asked_for(data):
  d = pd.PreparedData(data / "a", 16, "random")
  b = d.get_batch("train", (2, 4), seed=0, step=5)  # (A, B, T)
  assert b["inputs"].shape == (2, 4, 16)
  part = b["inputs"][(slice(None), slice(2, 4))]
  assert part.shape == (2, 2, 16) and b["inputs"].windows.rows_read == {2, 3, 6, 7}
  full = {k: np.asarray(v) for k, v in b.items()}
  np.testing.assert_array_equal(part, full["inputs"][:, 2:4])
  np.testing.assert_array_equal(full["inputs"][..., 1:], full["targets"][..., :-1])


def test_random_windows_are_a_pure_function_of_seed_step_and_stream_over_the_split(data):
  d = pd.PreparedData(data / "a", 16, "random")
  a = d.starts("train", 7, 3, 64, pd.TRAIN_STREAM)
  np.testing.assert_array_equal(a, d.starts("train", 7, 3, 64, pd.TRAIN_STREAM))
  for other in (d.starts("train", 7, 4, 64, pd.TRAIN_STREAM),
                d.starts("train", 8, 3, 64, pd.TRAIN_STREAM),
                d.starts("train", 7, 3, 64, pd.EVAL_STREAM)):
    assert not np.array_equal(a, other)
  many = d.starts("train", 0, 1, 20_000, pd.TRAIN_STREAM)  # every start in [0, n - T - 1]
  assert many.min() == 0 and many.max() == len(d.streams["train"]) - 16 - 1


# --------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def runs(data):
  """12 steps on dataset a (random and epoch windows) and on b (the same documents as text)."""
  out = {}
  for name, path, sampling in (("a", "a", "random"), ("epoch", "a", "epoch"), ("b", "b", "random")):
    c = config_for(data / path, max_steps=12, lr_decay_steps=12, eval_interval=6,
                   log_interval=1, checkpoint_every=6)
    c.data.sampling = sampling
    train_and_evaluate(c, str(data / f"run_{name}"))
    out[name] = data / f"run_{name}"
  return out


def test_training_from_a_prepared_dataset_learns_and_records_it(runs, data):
  for name in ("a", "epoch"):
    evals = [r for r in metrics(runs[name]) if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.15, name
    assert 0 < evals[-1]["val_bpb"] < evals[0]["val_bpb"]
  saved = json.loads((runs["a"] / "data.json").read_text())
  assert saved["identity"] == pd.manifest_identity(pd.read_manifest(data / "a"))
  assert losses(runs["a"]) != losses(runs["epoch"])


def test_the_same_documents_from_text_files_or_jsonl_train_to_the_same_losses(runs):
  assert losses(runs["a"]) == losses(runs["b"]) and len(losses(runs["a"])) == 12


def test_a_run_resumed_on_another_dataset_or_tokenizer_is_refused(runs, data, tmp_path):
  m = pd.read_manifest(data / "a")
  with open(data / "docs.jsonl") as f:
    (tmp_path / "fewer.jsonl").write_text("".join(f.readlines()[:-5]))
  prep.prepare(str(tmp_path / "fewer.jsonl"), "char", str(tmp_path / "other"), val="0.1",
               shard_tokens=97, workers=0, progress=False)
  c = config_for(tmp_path / "other", max_steps=14, lr_decay_steps=12, eval_interval=6,
                 log_interval=1, checkpoint_every=6)
  with pytest.raises(UserError, match="not the one this run started on"):
    train_and_evaluate(c, str(runs["a"]))
  prep.prepare(str(data / "docs.jsonl"), "tiktoken:cl100k_base", str(tmp_path / "tik"),
               val="0.1", workers=0, progress=False)
  c.data.path = str(tmp_path / "tik")
  with pytest.raises(UserError, match="differs from the prepared dataset's"):
    train_and_evaluate(c, str(runs["a"]))
  c = config_for(data / "a")
  c.data.tokenizer = "tiktoken:gpt2"
  with pytest.raises(UserError, match="config.data.tokenizer='tiktoken:gpt2' differs"):
    train_and_evaluate(c, str(tmp_path / "fresh"))
  assert m == pd.read_manifest(data / "a")


def test_kill_9_mid_training_resumes_to_the_same_parameters(data, tmp_path):
  from test_faults import (assert_same_state, committed_steps, start_train, tree_digest,
                           wait_for, write_config_file)
  c = config_for(data / "a", max_steps=10, lr_decay_steps=10, checkpoint_every=1,
                 log_interval=1, eval_interval=10)
  c.data.sampling = "epoch"
  ref = c.copy_and_resolve_references()
  ref.train.keep_checkpoints = 10
  train_and_evaluate(ref, str(tmp_path / "ref"))
  config_file = write_config_file(c, tmp_path / "config.py")
  workdir = tmp_path / "killed"
  proc = start_train(config_file, workdir)
  wait_for(lambda: (committed_steps(workdir) or [0])[-1] >= 3, proc)
  proc.kill()
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  proc = start_train(config_file, workdir)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert "resuming at step" in out
  assert_same_state(tree_digest(workdir)[1], tree_digest(tmp_path / "ref", 10)[1])


# ------------------------------------------------------------------------------- the checks


def test_a_damaged_changed_or_missing_shard_is_named(data, tmp_path):
  import shutil
  for damage in ("flip", "truncate", "remove", "tokenizer"):
    d = tmp_path / damage
    shutil.copytree(data / "a", d)
    (d / pd.VERIFIED).unlink(missing_ok=True)
    shard = d / "train_000003.bin"
    if damage == "flip":
      b = bytearray(shard.read_bytes())
      b[5] ^= 1
      shard.write_bytes(bytes(b))
    elif damage == "truncate":
      shard.write_bytes(shard.read_bytes()[:-2])
    elif damage == "remove":
      shard.unlink()
    else:  # the char tokenizer's vocabulary, edited in the manifest
      m = json.loads((d / "manifest.json").read_text())
      m["tokenizer"]["chars"] = m["tokenizer"]["chars"][:-1] + "~"
      (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError) as e:
      pd.PreparedData(d, 16)
    msg = str(e.value)
    assert "\n" not in msg
    assert ("train_000003.bin" in msg) == (damage != "tokenizer"), msg
    assert {"flip": "sha256", "truncate": "bytes", "remove": "missing",
            "tokenizer": "other ids"}[damage] in msg


def test_shards_are_hashed_once_then_their_size_and_mtime_vouch(data, tmp_path, monkeypatch):
  import shutil
  shutil.copytree(data / "a", tmp_path / "a")
  (tmp_path / "a" / pd.VERIFIED).unlink(missing_ok=True)
  hashed = []
  real = pd.sha256_of
  monkeypatch.setattr(pd, "sha256_of", lambda p: hashed.append(p) or real(p))
  pd.PreparedData(tmp_path / "a", 16)
  n = len(hashed)
  assert n == sum(len(s["shards"]) for s in pd.read_manifest(tmp_path / "a")["splits"].values())
  pd.PreparedData(tmp_path / "a", 16)
  assert len(hashed) == n


def test_a_text_file_larger_than_memory_points_to_prepare(toy_corpus, tmp_path):
  c = tiny_config(toy_corpus)
  c.data.max_text_bytes = 1000
  with pytest.raises(UserError) as e:
    train_and_evaluate(c, str(tmp_path / "run"))
  assert "llm-jax prepare" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------ several processes

ROWS_SCRIPT = """
import json, sys
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[-1].split("=")[1])
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=pid)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from llm_jax.data.prepared import PreparedData
from llm_jax.training.parallel import _reader
mesh = Mesh(np.array(jax.devices()).reshape(4), ("data",))
b = PreparedData(sys.argv[2], 16).get_batch("train", (1, 8), 0, 3)
x = jax.make_array_from_callback(b["inputs"].shape, NamedSharding(mesh, P(None, "data")),
                                 _reader(b["inputs"]))
read = sorted(b["inputs"].windows.rows_read)  # before the check below reads every row
full = np.asarray(b["inputs"])
local = {int(s.index[1].start): np.asarray(s.data) for s in x.addressable_shards}
assert all((full[:, i:i + 2] == v).all() for i, v in local.items())
json.dump(read, open(sys.argv[3] + str(pid), "w"))
"""


def test_two_processes_read_disjoint_rows_whose_union_is_the_batch(data, tmp_path):
  from test_parallel import free_port, run_processes
  (tmp_path / "rows.py").write_text(ROWS_SCRIPT)
  args = [sys.executable, str(tmp_path / "rows.py"), f"127.0.0.1:{free_port()}", str(data / "a"),
          str(tmp_path / "rows")]
  run_processes(args, 2, lambda: 0, timeout_s=120)
  rows = [set(json.loads((tmp_path / f"rows{i}").read_text())) for i in range(2)]
  assert rows[0] and rows[1] and not rows[0] & rows[1]
  assert rows[0] | rows[1] == set(range(8))


def test_two_processes_give_the_losses_of_one(data, tmp_path):
  from test_parallel import STEPS, assert_close, read_metrics, run_processes, two_process_args
  steps = 6
  args = two_process_args("unused", tmp_path / "two", steps) + [
      "--config.data.corpus=prepared", f"--config.data.path={data / 'a'}"]
  run_processes(args, 2, lambda: (tmp_path / "two" / "metrics.jsonl").exists() and
                (tmp_path / "two" / "metrics.jsonl").stat().st_size)
  spec = importlib.util.spec_from_file_location("gpt_char", ROOT / "configs" / "gpt_char.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.parallel, c.data.corpus, c.data.path = "none", "prepared", str(data / "a")
  c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=16)
  c.train.update(batch_size=16, max_steps=steps, lr_decay_steps=STEPS, warmup_steps=2,
                 eval_interval=10, eval_iters=2, log_interval=1, checkpoint_every=10,
                 sample_tokens=0)
  train_and_evaluate(c, str(tmp_path / "one"))
  two, one = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
  assert_close(two[0], one[0])
  assert_close(two[1], one[1])


def test_evaluate_scores_a_prepared_run_as_its_last_evaluation(runs):
  r = subprocess.run([sys.executable, "-m", "llm_jax", "evaluate", f"--workdir={runs['a']}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  scores = json.loads(r.stdout.strip().splitlines()[-1])
  last = [x for x in metrics(runs["a"]) if "val_loss" in x][-1]
  assert scores["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
  assert scores["bpb"] == pytest.approx(last["val_bpb"], rel=1e-5)
