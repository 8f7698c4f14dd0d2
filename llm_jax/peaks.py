"""The peak a model's FLOP/s is measured against: a jitted square matmul, timed on this machine.

    python -m llm_jax.peaks        # prints {"float32": GFLOP/s, "bfloat16": GFLOP/s, ...}
    python -m llm_jax.peaks --cached   # this machine's figures in the cache (measured if not)

MFU (model FLOPs utilization) = the model's useful FLOP/s / a peak. A datasheet peak says little on a
CPU (it depends on the cores JAX gets, the vector units XLA uses, the clock under load), so the
peak is measured in the same run: C = A @ B with A, B of n x n (2 n^3 FLOPs), in float32, and in
bfloat16 inputs with float32 accumulation (what a bf16 model's matmuls do). The best of a few
timed calls is kept, as a peak should be. On a known accelerator the datasheet's dense peak is
reported too.

`cached()` keeps the figures in a file (LLM_JAX_CACHE_DIR, by default ~/.cache/llm_jax, beside
the compilation cache's xla/), one entry per machine (backend, device kind, CPU model and its
flags, device count, jax version): model.dtype='auto' reads them there (models/precision.py)
and measures only on a machine it has not seen. It sits below models/ and bench/, which both read it.
"""

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from llm_jax.fileio import write_json

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


def cache_file() -> Path:
  """Where the measured peaks are kept: $LLM_JAX_CACHE_DIR/peaks.json, by default
  ~/.cache/llm_jax/peaks.json."""
  root = os.environ.get("LLM_JAX_CACHE_DIR") or Path.home() / ".cache" / "llm_jax"
  return Path(root) / "peaks.json"


def machine() -> str:
  """What the peaks depend on, as one key: a CPU's model name and a digest of its feature flags
  (the same model name covers CPUs with and without AMX), the accelerator's kind, jax's version."""
  cpu = platform.processor()
  try:
    info = Path("/proc/cpuinfo").read_text()
    lines = dict(l.split(":", 1) for l in info.splitlines() if ":" in l)
    cpu = lines.get("model name\t", cpu).strip()
    flags = next((v for k, v in lines.items() if k.strip() == "flags"), "")
    cpu += " " + hashlib.sha256(flags.encode()).hexdigest()[:12]
  except OSError:
    pass
  return (f"{jax.default_backend()} | {jax.devices()[0].device_kind} x{jax.device_count()} | "
          f"{cpu} | jax {jax.__version__}")


_SEEN = {}  # (cache file, machine) -> peaks, this process's


def cached() -> dict:
  """This machine's measured peaks from the cache file; measured and written there if missing
  (or if the file is unreadable)."""
  path, key = cache_file(), machine()
  if (path, key) in _SEEN:
    return _SEEN[path, key]
  try:
    table = json.loads(path.read_text())
  except (OSError, ValueError):
    table = {}
  if key not in table:
    table[key] = measure(repeats=3)
    try:
      write_json(path, table)
    except OSError as e:  # a read-only home: measured again next time
      print(f"warning: could not keep the measured matmul peaks in {path}: {e}", file=sys.stderr)
  _SEEN[path, key] = table[key]
  return table[key]


if __name__ == "__main__":
  print(json.dumps(cached() if "--cached" in sys.argv else measure(), indent=2))
