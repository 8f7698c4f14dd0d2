"""The peak a model's FLOP/s is measured against: a jitted square matmul, timed on this machine.

    python -m llm_jax.bench.peak        # prints {"float32": GFLOP/s, "bfloat16": GFLOP/s, ...}

MFU (model FLOPs utilization) = the model's useful FLOP/s / a peak. A datasheet peak says little on a
CPU (it depends on the cores JAX gets, the vector units XLA uses, the clock under load), so the
peak is measured in the same run: C = A @ B with A, B of n x n (2 n^3 FLOPs), in float32, and in
bfloat16 inputs with float32 accumulation (what a bf16 model's matmuls do). The best of a few
timed calls is kept, as a peak should be. On a known accelerator the datasheet's dense peak is
reported too.
"""

import json
import time

import jax
import jax.numpy as jnp

# dense (no sparsity) datasheet peaks in TFLOP/s, by a substring of jax's device_kind
DATASHEET_TFLOPS = {
    "H200": {"float32": 67.0, "bfloat16": 989.0},
    "H100": {"float32": 67.0, "bfloat16": 989.0},
    "A100": {"float32": 19.5, "bfloat16": 312.0},
    "L4": {"float32": 30.3, "bfloat16": 121.0},
    "TPU v4": {"float32": 275.0, "bfloat16": 275.0},
    "TPU v5 lite": {"float32": 197.0, "bfloat16": 197.0},
}


def matmul_gflops(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """Best GFLOP/s of a jitted (n x n) @ (n x n) matmul with inputs in `dtype`, f32 accumulation."""
  a_NN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b_NN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(matmul(a_NN, b_NN))  # compile and warm up
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(matmul(a_NN, b_NN))
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def datasheet_tflops(device_kind: str) -> dict | None:
  """The datasheet's peaks of a known accelerator ({'float32': TFLOP/s, 'bfloat16': ...}), else None."""
  for name, peaks in DATASHEET_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return peaks
  return None


def measure(n: int = 2048, repeats: int = 5) -> dict:
  """Measured peaks in GFLOP/s for float32 and bfloat16, and the datasheet's when known."""
  kind = jax.devices()[0].device_kind
  return {"matmul_n": n, "device_kind": kind,
          "float32": round(matmul_gflops(n, jnp.float32, repeats), 1),
          "bfloat16": round(matmul_gflops(n, jnp.bfloat16, repeats), 1),
          "datasheet_tflops": datasheet_tflops(kind)}


if __name__ == "__main__":
  print(json.dumps(measure(), indent=2))
