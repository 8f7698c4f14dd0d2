"""Decoding speed: tokens/s for N new tokens, cached vs uncached, at several batch sizes.

    python -m llm_jax.bench.decode [--config=configs/gpt_char_baby.py] [--new_tokens=500]

Prints one JSON object. The model has the config's shapes with freshly initialized parameters
(speed does not depend on the weights). Compile time is measured apart: the first call of each
program minus a steady call. A 1-token prompt, as nanoGPT's sample.py ('\\n').
"""

import json
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from llm_jax import decoding, peaks
from llm_jax.models import build_model

config_flags.DEFINE_config_file("config", "configs/gpt_char_baby.py", "model config")
flags.DEFINE_integer("new_tokens", 500, "tokens generated per sequence")
flags.DEFINE_list("batch_sizes", ["1", "8"], "batch sizes to measure")
flags.DEFINE_integer("vocab_size", 65, "vocabulary size of the benchmarked model")
flags.DEFINE_integer("repeats", 3, "timed calls per case (the median is reported)")
FLAGS = flags.FLAGS


def time_call(fn):
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def main(_):
  c = FLAGS.config
  T = c.model.block_size
  chosen = peaks.fix_run_dtype(c.model)  # 'auto' as a run created here would take it
  if chosen:
    print(chosen, file=sys.stderr, flush=True)
  model = build_model(c.model, FLAGS.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
  results = []
  for B in map(int, FLAGS.batch_sizes):
    prompt = jnp.zeros((B, 1), jnp.int32)
    for name, fn in (("cached", decoding.generate), ("uncached", decoding.generate_uncached)):
      call = lambda: fn(model, params, prompt, jax.random.key(1), max_new_tokens=FLAGS.new_tokens,
                        block_size=T, temperature=1.0)
      first = time_call(call)
      times = [time_call(call) for _ in range(FLAGS.repeats)]
      s = float(np.median(times))
      results.append({"mode": name, "batch": B, "new_tokens": FLAGS.new_tokens,
                      "seconds": round(s, 4), "tokens_per_s": round(B * FLAGS.new_tokens / s, 1),
                      "compile_s": round(first - s, 2)})
  print(json.dumps({"benchmark": "decode", "block_size": T, "n_layer": c.model.n_layer,
                    "n_embd": c.model.n_embd, "device": str(jax.devices()[0].device_kind),
                    "results": results}, indent=2))


if __name__ == "__main__":
  app.run(main)
