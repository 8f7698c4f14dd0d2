"""Greedy decoding speed of the batched engine (decoding/engine.py) at batch 1, 32 and 64, and the
harness's generate_until before (one program per prompt length, decoding/lm.py) and after (the
engine); prints JSON.

    python experiments/engine/speed.py [--new=64] [--reps=2] [--lengths=24] [--skip_harness]

Tokens per CPU-second (the process's CPU time, not wall time: the cores are shared): the 10.7M
shape (6 layers, 6 heads, 384 wide, 256 tokens of context; random init, a 65-token vocabulary as
the plays' characters), greedy, prompts of 8..64 tokens (their lengths
spread), --new tokens each; the best of --reps timed calls after a warm-up call that compiles.
Batch 1 is the engine with one prompt, and also today's single-prompt decoder (decoding.generate).
'decode_only' takes the prefill out: the time of a call drawing 64 tokens less one drawing 16, per
token drawn. finished_share: 32 rows with max_new_tokens spread over 1..--new, the share of
row-steps the loop spent on rows that had already stopped.

Harness: the same model through lm-eval's generate_until path, --lengths requests (24) of as many
prompt lengths (8, 9, ... tokens), max_gen_toks 32, greedy, batch_size 32: 'before' groups the
requests by prompt length and decodes each group with decoding.generate (the code before issue
40), 'after' is JaxLM.generate_until (the engine). Timed once each, compilation included (what a
harness run pays), JAX's persistent compilation cache off.
"""

import argparse
import json
import os
import subprocess
import time

os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from llm_jax import decoding  # noqa: E402
from llm_jax.decoding import engine  # noqa: E402
from llm_jax.config import default_config  # noqa: E402
from llm_jax.models import build_model, init_params  # noqa: E402

V = 65
# decode-only rates: calls drawing this many tokens, the shorter one's time taken off
DECODE_ONLY = (16, 64)


def model_10m():
  c = default_config().model
  c.update(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0)
  m = build_model(c, V)
  return m, init_params(m, c, jax.random.key(0)), c.block_size


def prompts(n, seed=0, lo=8, hi=64):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, V, int(k)).tolist() for k in rng.integers(lo, hi + 1, n)]


def best_time(fn, reps):
  """The least CPU time (this process's threads, user + system) of `reps` calls after a warm-up
  call that compiles: on cores shared with other processes the wall time mostly measures them."""
  fn()  # compiles
  times = []
  for _ in range(reps):
    t = time.process_time()
    fn()
    times.append(time.process_time() - t)
  return min(times)


def machine() -> dict:
  """The CPU's model name (lscpu) and the load average when the figures were taken."""
  model = next((line.split(":", 1)[1].strip() for line in
                subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name")), "?")
  return {"cpu": model, "cores": os.cpu_count(), "load_average_1_5_15": os.getloadavg()}


def tokens_per_s(m, params, L, new, reps):
  out = {}
  for B in (1, 32, 64):
    ps = prompts(B, seed=B)
    run = lambda n: (lambda: decoding.generate_batch(  # noqa: E731
        m, params, ps, jax.random.key(0), block_size=L, max_new_tokens=n, temperature=0))
    out[f"engine_batch{B}_tok_s"] = B * new / best_time(run(new), reps)
    # decoding alone: the prefill (the same in both calls) taken out
    short, long = best_time(run(DECODE_ONLY[0]), reps), best_time(run(DECODE_ONLY[1]), reps)
    out[f"engine_batch{B}_decode_only_tok_s"] = B * (DECODE_ONLY[1] - DECODE_ONLY[0]) / (
        long - short)
  # rows that stop early (each its own max_new_tokens, 1..new) are computed until the last stops:
  # the share of row-steps spent on finished rows
  ps = prompts(32, seed=32)
  limits = np.random.default_rng(0).integers(1, new + 1, 32).tolist()
  decoding.generate_batch(m, params, ps, jax.random.key(0), block_size=L, max_new_tokens=limits,
                          temperature=0)
  out["finished_share_batch32_limits_1_to_new"] = engine.finished_share[0]
  p = np.array([prompts(1, seed=1)[0]])
  s = best_time(lambda: decoding.generate(m, params, p, jax.random.key(0), max_new_tokens=new,
                                          block_size=L, greedy=True), reps)
  out["single_path_batch1_tok_s"] = new / s
  # today's decoder at batch 32, all rows one prompt (of 40 tokens): what a step of 32 rows costs
  # without the engine's per-row positions
  p = np.array([prompts(1, seed=2, lo=40, hi=40)[0]] * 32)
  s = best_time(lambda: decoding.generate(m, params, p, jax.random.key(0), max_new_tokens=new,
                                          block_size=L, greedy=True), reps)
  out["single_path_batch32_one_length_tok_s"] = 32 * new / s
  for B in (32, 64):
    out[f"speedup_batch{B}_vs_engine_batch1"] = out[f"engine_batch{B}_tok_s"] / out[
        "engine_batch1_tok_s"]
    out[f"decode_only_speedup_batch{B}_vs_engine_batch1"] = out[
        f"engine_batch{B}_decode_only_tok_s"] / out["engine_batch1_decode_only_tok_s"]
    out[f"speedup_batch{B}_vs_single_path"] = out[f"engine_batch{B}_tok_s"] / out[
        "single_path_batch1_tok_s"]
  return out


def harness(m, params, L, n_lengths):
  """generate_until on n_lengths prompt lengths: before (one program per length) and after."""
  from lm_eval.api.instance import Instance
  from llm_jax.harness_lm import JaxLM
  from llm_jax.data.tokenizers import CharTokenizer
  config = default_config()
  config.model.update(n_layer=6, n_head=6, n_embd=384, block_size=L)
  tok = CharTokenizer("".join(chr(ord("!") + i) for i in range(V)))
  lm = JaxLM(config, tok, m, params, 32, None)
  rng = np.random.default_rng(0)
  reqs = [Instance("generate_until", None, (tok.decode(rng.integers(0, V, n)),
                                            {"until": ["\n\n"], "max_gen_toks": 32,
                                             "do_sample": False}), k)
          for k, n in enumerate(rng.permutation(np.arange(8, 8 + n_lengths)))]

  def before():  # the code before issue 40: one group (and program) per prompt length
    groups = {}
    for i, r in enumerate(reqs):
      ids = lm.tok_encode(r.args[0])[-(L - 32):]
      groups.setdefault(len(ids), []).append((i, ids))
    out = [None] * len(reqs)
    for P, members in groups.items():
      for start in range(0, len(members), 32):
        chunk = members[start:start + 32]
        prompt = np.array([ids for _, ids in chunk] + [chunk[0][1]] * (32 - len(chunk)), np.int32)
        seq = decoding.generate(m, params, prompt, jax.random.key(0), max_new_tokens=32,
                                block_size=L, greedy=True)
        for b, (i, _) in enumerate(chunk):
          out[i] = lm.tok_decode(seq[b, P:].tolist()).split("\n\n")[0]
    return out

  t = time.perf_counter()
  a = before()
  t_before = time.perf_counter() - t
  t = time.perf_counter()
  b = lm.generate_until(reqs)
  t_after = time.perf_counter() - t
  return {"harness_requests": len(reqs), "harness_prompt_lengths": n_lengths,
          "harness_before_s": t_before, "harness_after_s": t_after,
          "harness_speedup": t_before / t_after, "harness_same_texts": a == b}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--skip_harness", action="store_true")
  ap.add_argument("--only_harness", action="store_true")
  ap.add_argument("--lengths", type=int, default=24)
  args = ap.parse_args()
  m, params, L = model_10m()
  print(json.dumps(machine()), flush=True)
  if not args.only_harness:
    out = {"new_tokens": args.new, **tokens_per_s(m, params, L, args.new, args.reps)}
    print(json.dumps(out, indent=1), flush=True)
  if not args.skip_harness:
    print(json.dumps(harness(m, params, L, args.lengths), indent=1), flush=True)


if __name__ == "__main__":
  main()
