"""Greedy accuracy on 256 fixed arithmetic:4 prompts (a seed no run draws from) of the SFT source
and of each RL run's final parameters: a less noisy start/end figure than the rollouts' reward.

  python experiments/rl/evaluate.py runs/rl
"""

import glob
import os
import sys

import jax
import numpy as np

from llm_jax.decoding.engine import generate_batch
from llm_jax.rl import tasks
from llm_jax.training.workdir import load_run


def accuracy(workdir, prompts):
  config, tok, model, params, _ = load_run(workdir)
  task = tasks.get_task(config.rl.task, 0)
  out = generate_batch(model, params, [tok.encode(p.text) for p in prompts], jax.random.key(0),
                       block_size=config.model.block_size, max_new_tokens=config.rl.max_new_tokens,
                       temperature=0.0, eos_id=int(tok.encode(task.stop)[0]))
  out = sorted(out, key=lambda c: c.prompt_index)
  return np.mean([task.reward(p, tok.decode(c.tokens).split(task.stop)[0])
                  for p, c in zip(prompts, out)])


def main(root):
  prompts = tasks.get_task("arithmetic:4", 0).prompts(np.random.default_rng(12345), 256)
  for w in [os.path.join(root, "sft")] + sorted(glob.glob(os.path.join(root, "*_s[0-9]"))):
    print(f"{os.path.basename(w)}: greedy accuracy {accuracy(w, prompts):.3f}", flush=True)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/rl")
