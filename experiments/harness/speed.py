"""`llm-jax harness` vs `lm_eval --model hf` on the same model and task, end to end; prints JSON.

    python experiments/harness/speed.py --out=/tmp/harness_speed [--items=1000] [--batch_size=32]

The model: the 10.7M shape (nanoGPT's shakespeare_char GPT: 6 layers, 6 heads, 384 wide, 256
characters of context), random init, saved after one training step on the plays, then exported
with `llm-jax export` (GPT-2's layout) plus a character tokenizer.json equal to the run's. The
task: `--items` items in HellaSwag's form (a context and four endings) cut from the plays'
validation text (plays_mc.yaml + plays_mc.jsonl, written into --out). Each side runs as its own
process, timed from start to exit (imports, task indexing, compilation included; JAX's
persistent compilation cache off), in wall time and in CPU time (user + system: less moved by other
processes on shared cores). The two acc and acc_norm must be equal: a check that both score the
same model. On a quiet machine run it alone, e.g. `nice -n 0` with nothing else running.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def write_plays_task(d, n_items, seed=0, name="plays_mc", ctx=(60, 180), end=(20, 40),
                     swapped=False):
  """A HellaSwag-form task from the plays' validation split: a context of ctx characters (60-180)
  that starts at a line, its true next `end` characters (20-40), and three endings of that length
  drawn from elsewhere (swapped: the true ending with two neighbouring characters swapped at
  three places, so that only what follows what, locally, tells them apart)."""
  from llm_jax.config import default_config
  from llm_jax.data.corpora import load_text, split
  _, val = split(load_text(default_config().data))
  rng = np.random.default_rng(seed)
  starts = [i + 1 for i in range(len(val) - 300) if val[i] == "\n"]
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, f"{name}.jsonl"), "w", encoding="utf-8") as f:
    for _ in range(n_items):
      s = int(rng.choice(starts))
      n_ctx, n_end = int(rng.integers(ctx[0], ctx[1] + 1)), int(rng.integers(end[0], end[1] + 1))
      true = val[s + n_ctx:s + n_ctx + n_end]
      if swapped:
        at = [i for i in range(n_end - 1) if true[i] != true[i + 1]]
        endings = [true[:i] + true[i + 1] + true[i] + true[i + 2:]
                   for i in rng.choice(at, 3, replace=False)]
      else:
        endings = [val[j:j + n_end] for j in rng.integers(0, len(val) - n_end, 3)]
      label = int(rng.integers(4))
      endings.insert(label, true)
      f.write(json.dumps({"ctx": val[s:s + n_ctx], "endings": endings, "label": label}) + "\n")
  with open(os.path.join(d, f"{name}.yaml"), "w", encoding="utf-8") as f:
    f.write(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n"
            f"  cache_dir: {os.path.join(d, 'hf_cache')}\n"
            f"  data_files:\n    test: {os.path.join(d, name + '.jsonl')}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{ctx}}\"\n"
            "doc_to_target: label\ndoc_to_choice: \"{{endings}}\"\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def char_tokenizer_json(chars: str, path):
  """A Hugging Face tokenizer.json that encodes and decodes as llm-jax's character tokenizer:
  one token per character, ids in the run's order."""
  import tokenizers
  vocab = {c: i for i, c in enumerate(chars)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=chars[0]))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), "isolated")
  tok.decoder = tokenizers.decoders.Fuse()
  tok.save(str(path))
  # else AutoTokenizer builds GPT2Tokenizer from the vocabulary (config.json's model_type), with
  # GPT-2's own pre-tokenizer, which drops the spaces and newlines
  with open(os.path.join(os.path.dirname(str(path)), "tokenizer_config.json"), "w") as f:
    # the newline as BOS: lm-eval's prefix token, the one llm-jax's harness takes for this run
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "\n",
               "eos_token": "\n"}, f)


def make_run(out):
  from llm_jax.config import default_config
  from llm_jax.generate import load_run
  from llm_jax.training.loop import train_and_evaluate
  from llm_jax import convert
  run, hf = os.path.join(out, "run"), os.path.join(out, "hf")
  if not os.path.isdir(os.path.join(run, "checkpoints")):
    c = default_config()
    c.model.update(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0)
    c.train.update(batch_size=4, max_steps=1, eval_interval=1, eval_iters=1, checkpoint_every=1,
                   warmup_steps=0, sample_tokens=0)
    train_and_evaluate(c, run)
  if not os.path.isfile(os.path.join(hf, "tokenizer_config.json")):
    convert.export(run, hf)
    _, tok, _, _, _ = load_run(run)
    char_tokenizer_json(tok.chars, os.path.join(hf, "tokenizer.json"))
  return run, hf


def timed(cmd, env):
  """(wall seconds, CPU seconds: user + system of the process and its children)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.perf_counter()
  r = subprocess.run(cmd, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if r.returncode:
    sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
  return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--items", type=int, default=1000)
  p.add_argument("--batch_size", type=int, default=32)
  a = p.parse_args()
  out = os.path.abspath(a.out)
  env = {**os.environ, "PYTHONPATH": ROOT, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
         "LLM_JAX_COMPILATION_CACHE": "off", "TOKENIZERS_PARALLELISM": "false"}
  os.environ.update(env)
  run, hf = make_run(out)
  tasks = os.path.join(out, f"tasks_{a.items}")
  write_plays_task(tasks, a.items)
  ours_json, ref_json = os.path.join(out, "llm_jax.json"), os.path.join(out, "lm_eval_hf")
  ours = timed([os.path.join(BIN, "llm-jax"), "harness", f"--workdir={run}", "--tasks=plays_mc",
                f"--include_path={tasks}", f"--batch_size={a.batch_size}",
                f"--output={ours_json}"], env)
  ref = timed([os.path.join(BIN, "lm_eval"), "--model", "hf", "--model_args",
               f"pretrained={hf},dtype=float32", "--tasks", "plays_mc", "--include_path", tasks,
               "--batch_size", str(a.batch_size), "--device", "cpu", "--output_path", ref_json],
              env)
  with open(ours_json) as f:
    r_ours = json.load(f)["results"]["plays_mc"]
  found = [os.path.join(dp, fn) for dp, _, fns in os.walk(ref_json) for fn in fns
           if fn.startswith("results")]
  with open(max(found, key=os.path.getmtime)) as f:
    r_ref = json.load(f)["results"]["plays_mc"]
  print(json.dumps({
      "items": a.items, "requests": 4 * a.items, "batch_size": a.batch_size,
      "llm_jax_harness_s": round(ours[0], 1), "lm_eval_hf_s": round(ref[0], 1),
      "speedup": round(ref[0] / ours[0], 2),
      "llm_jax_harness_cpu_s": round(ours[1], 1), "lm_eval_hf_cpu_s": round(ref[1], 1),
      "cpu_speedup": round(ref[1] / ours[1], 2), "load_average": os.getloadavg(),
      "acc": [r_ours["acc,none"], r_ref["acc,none"]],
      "acc_norm": [r_ours["acc_norm,none"], r_ref["acc_norm,none"]],
      "cpu": os.cpu_count(), "jax_platform": "cpu"}))


if __name__ == "__main__":
  main()
