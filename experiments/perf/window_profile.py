"""Where a decoding step past the context window goes: N full forwards of a batch-1 window in one
jitted loop, timed, then traced (llm_jax.training.profile) with the costliest XLA operations.

    python experiments/perf/window_profile.py [--config=configs/gpt_char_baby.py]
        [--config.model.dtype=bfloat16] [--last_only] [--calls=200]

Prints one JSON object. The config's model, fresh parameters. `taskset -c 0` in front runs
it with a one-thread XLA pool (its size is the process's CPU affinity when JAX starts).
"""

import json
import os
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"

from absl import app, flags  # noqa: E402
import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from llm_jax.models import build_model  # noqa: E402
from llm_jax.training import profile  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/gpt_char_baby.py", "model config")
flags.DEFINE_bool("last_only", False, "the last position's logits alone (the decoding step's)")
flags.DEFINE_integer("calls", 200, "window forwards per jitted call")
flags.DEFINE_integer("vocab_size", 65, "vocabulary size of the profiled model")
FLAGS = flags.FLAGS


def main(_):
  c = FLAGS.config.model
  model = build_model(c, FLAGS.vocab_size)
  window_BL = jnp.zeros((1, c.block_size), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), window_BL)["params"]

  @jax.jit
  def forwards(params, window_BL):
    def body(i, acc):  # the window changes each time, so that no forward is hoisted out
      logits = model.apply({"params": params}, window_BL + i % 2, last_only=FLAGS.last_only)
      return acc + logits[:, -1].sum()
    return jax.lax.fori_loop(0, FLAGS.calls, body, 0.0)

  forwards(params, window_BL).block_until_ready()
  ms = []
  for _ in range(3):
    t = time.perf_counter()
    forwards(params, window_BL).block_until_ready()
    ms.append(round((time.perf_counter() - t) / FLAGS.calls * 1e3, 3))
  trace = profile.trace(lambda: forwards(params, window_BL), 2, "/tmp/llm_jax_window_profile",
                        top=8)
  print(json.dumps({"dtype": c.dtype, "last_only": FLAGS.last_only,
                    "cpus": len(os.sched_getaffinity(0)), "ms_per_forward": ms,
                    "top_ops_us_per_forward": [[n, round(t / FLAGS.calls * 1e3, 1)]
                                               for n, t in trace["top_ops"]]}))


if __name__ == "__main__":
  app.run(main)
