"""Where a decoding step past the context window goes: N full forwards of a batch-1 window in one
jitted loop, timed, then traced (llm_jax.training.profile) with the costliest XLA operations.

    python experiments/perf/window_profile.py [--dtype=bfloat16] [--last_only] [--calls=200]

Prints one JSON object. The baby config's shapes, fresh parameters. `taskset -c 0` in front runs
it with a one-thread XLA pool (its size is the process's CPU affinity when JAX starts).
"""

import argparse
import json
import os
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402

from llm_jax.config import default_config  # noqa: E402
from llm_jax.models import build_model  # noqa: E402
from llm_jax.training import profile  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--dtype", default="bfloat16")
parser.add_argument("--last_only", action="store_true", help="the last position's logits alone")
parser.add_argument("--calls", type=int, default=200, help="window forwards per jitted call")
args = parser.parse_args()

c = default_config().model
c.update(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, use_bias=False,
         dtype=args.dtype)  # configs/gpt_char_baby.py's model
model = build_model(c, 65)
params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64), jnp.int32))["params"]


@jax.jit
def forwards(params, window_BL):
  def body(i, acc):  # the window changes each time, so that no forward is hoisted out
    logits = model.apply({"params": params}, window_BL + i % 2, last_only=args.last_only)
    return acc + logits[:, -1].sum()
  return jax.lax.fori_loop(0, args.calls, body, 0.0)


window = jnp.zeros((1, 64), jnp.int32)
forwards(params, window).block_until_ready()
ms = []
for _ in range(3):
  t = time.perf_counter()
  forwards(params, window).block_until_ready()
  ms.append(round((time.perf_counter() - t) / args.calls * 1e3, 3))
trace = profile.trace(lambda: forwards(params, window), 2, "/tmp/llm_jax_window_profile", top=8)
print(json.dumps({"dtype": args.dtype, "last_only": args.last_only,
                  "cpus": len(os.sched_getaffinity(0)), "ms_per_forward": ms,
                  "top_ops_us_per_forward": [[n, round(t / args.calls * 1e3, 1)]
                                             for n, t in trace["top_ops"]]}))
