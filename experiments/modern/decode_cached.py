"""llm_jax.bench.decode's cached measurement alone, for shapes whose uncached decode is too slow to
time on a CPU (each uncached step is a full forward over block_size tokens).

    python experiments/modern/decode_cached.py --config=configs/gpt_char.py \
      --config.model.n_layer=6 --config.model.n_head=6 --config.model.n_embd=384 \
      --config.model.block_size=256 --config.model.n_kv_head=2 --new_tokens=255

The same timing as the bench (a 1-token prompt, the median of --repeats steady calls, compile time
as the first call minus a steady one) and the same JSON, with n_head, n_kv_head and the KV cache's
bytes per token (2 * n_layer * n_kv_head * head_size * 4, float32) added. With new_tokens at most
block_size - 1, every token is decoded from the cache.
"""

import json

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from llm_jax import decoding
from llm_jax.bench.decode import time_call  # noqa: F401 (also defines the bench's flags)
from llm_jax.models import build_model

FLAGS = flags.FLAGS


def main(_):
  c = FLAGS.config
  m = c.model
  T = m.block_size
  kv = m.n_kv_head or m.n_head
  model = build_model(m, FLAGS.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
  results = []
  for B in map(int, FLAGS.batch_sizes):
    prompt = jnp.zeros((B, 1), jnp.int32)
    call = lambda: decoding.generate(model, params, prompt, jax.random.key(1),
                                     max_new_tokens=FLAGS.new_tokens, block_size=T,
                                     temperature=1.0)
    first = time_call(call)
    times = [time_call(call) for _ in range(FLAGS.repeats)]
    s = float(np.median(times))
    results.append({"mode": "cached", "batch": B, "new_tokens": FLAGS.new_tokens,
                    "seconds": round(s, 4), "tokens_per_s": round(B * FLAGS.new_tokens / s, 1),
                    "compile_s": round(first - s, 2)})
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(json.dumps({"benchmark": "decode", "block_size": T, "n_layer": m.n_layer,
                    "n_embd": m.n_embd, "n_head": m.n_head, "n_kv_head": kv, "params": n_params,
                    "kv_cache_bytes_per_token": 2 * m.n_layer * kv * (m.n_embd // m.n_head) * 4,
                    "device": str(jax.devices()[0].device_kind), "results": results}, indent=2))


if __name__ == "__main__":
  app.run(main)
