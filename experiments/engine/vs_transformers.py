"""The batched engine (decoding/engine.py) against transformers' `generate` on the exported
checkpoint: same prompts, same batch, greedy; prints JSON.

    python experiments/engine/vs_transformers.py [--new=32] [--batches=1,32] [--reps=2]

The 10.7M shape of speed.py (6 layers, 6 heads, 384 wide, 256 tokens of context, random init,
the 65 characters of the plays' vocabulary) is written as a run (a step-0 checkpoint, as
`llm-jax convert` writes one), exported with `llm-jax export` (convert.export) to a
GPT2LMHeadModel, and loaded by transformers (float32, eager attention, --torch_threads: 1 by
default, transformers' best on these shared cores).
Prompts of 8..64 tokens with spread lengths; transformers gets them left-padded with an
attention mask (how its `generate` takes a batch of different lengths), do_sample=False,
exactly --new tokens (no EOS: the char vocabulary has none). Both sides: the best of --reps
timed calls after a warm-up call; wall seconds and this process's CPU seconds (the cores are
shared). `same_tokens` is the share of rows whose new tokens are identical on both sides.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))
from speed import V, machine, model_10m, prompts  # noqa: E402

from llm_jax import convert, decoding  # noqa: E402
from llm_jax.config import default_config  # noqa: E402
from llm_jax.data.tokenizers import CharTokenizer  # noqa: E402
from llm_jax.training import checkpoint, workdir as workdir_lib  # noqa: E402
from llm_jax.training.optimizer import make_optimizer  # noqa: E402
from llm_jax.training.steps import create_state  # noqa: E402


def write_run(workdir, params):
  """A run dir holding `params` at step 0 (as convert.convert writes one)."""
  config = default_config()
  config.model.update(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.0)
  tok = CharTokenizer("".join(chr(ord("!") + i) for i in range(V)))
  manager = checkpoint.make_manager(workdir, 1)
  state = create_state(params, make_optimizer(config.train))
  checkpoint.save(manager, jax.device_get(state), workdir_lib.checkpoint_meta())
  manager.wait_until_finished()
  manager.close()
  workdir_lib.write_run_files(workdir, config, tok)


def timed(fn, reps):
  fn()  # compiles / warms up
  best = (float("inf"), float("inf"), None)
  for _ in range(reps):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    best = min(best, (time.perf_counter() - t, time.process_time() - c, out),
               key=lambda x: x[0])
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--new", type=int, default=32)
  ap.add_argument("--batches", default="1,32")
  ap.add_argument("--reps", type=int, default=2)
  # torch's OpenMP threads on cores shared with other processes: 2 threads ran transformers 10-20x
  # slower than 1 here (busy-waiting threads that lose their core), so 1 by default: its best
  ap.add_argument("--torch_threads", type=int, default=1)
  args = ap.parse_args()
  torch.set_num_threads(args.torch_threads)
  m, params, L = model_10m()
  tmp = tempfile.mkdtemp()
  write_run(os.path.join(tmp, "run"), params)
  convert.export(os.path.join(tmp, "run"), os.path.join(tmp, "hf"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.join(tmp, "hf"), attn_implementation="eager", dtype=torch.float32).eval()
  out = {"machine": machine(), "new_tokens": args.new, "torch_threads": torch.get_num_threads(),
         "transformers": transformers.__version__}
  for B in map(int, args.batches.split(",")):
    ps = prompts(B, seed=B)

    def engine():
      cs = decoding.generate_batch(m, params, ps, jax.random.key(0), block_size=L,
                                   max_new_tokens=args.new, temperature=0)
      return [c.tokens for c in cs]

    P = max(map(len, ps))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in ps])

    def hf_generate():
      with torch.no_grad():
        seq = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                          max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)
      return seq[:, P:].tolist()

    e_wall, e_cpu, e_tok = timed(engine, args.reps)
    h_wall, h_cpu, h_tok = timed(hf_generate, args.reps)
    n = B * args.new
    out[f"batch{B}"] = {
        "engine_tok_s_wall": n / e_wall, "engine_tok_s_cpu": n / e_cpu,
        "transformers_tok_s_wall": n / h_wall, "transformers_tok_s_cpu": n / h_cpu,
        "speedup_wall": h_wall / e_wall, "speedup_cpu": h_cpu / e_cpu,
        "same_tokens": float(np.mean([a == b for a, b in zip(e_tok, h_tok)]))}
    print(json.dumps({f"batch{B}": out[f"batch{B}"]}), flush=True)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
