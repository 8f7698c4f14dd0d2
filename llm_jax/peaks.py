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
flags, device count, jax version): model.dtype='auto' reads them there and measures only on a
machine it has not seen.

model.dtype='auto' is decided here, once, when a run is created (`fix_run_dtype`, called by the
training run and by `llm-jax bench`): bfloat16 where this machine multiplies bf16 at least
BF16_GAIN times as fast as f32, float32 elsewhere. The run's config.json keeps the concrete
dtype, so a resume on another machine keeps the precision the run was created with. Building a
model never measures: an 'auto' that reaches models/ unresolved is float32 (models/precision.py).
It sits below models/, training/ and bench/, which read it.
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

from llm_jax.errors import UserError
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


# how much faster a 2048^3 bf16 matmul must be than an f32 one for dtype='auto' to choose bf16:
# below that the rounding's cost in accuracy buys too little. A CPU without bf16 arithmetic
# (Zen 3) is slower in bf16; a Zen 4 (AVX-512 BF16) measures 1.7-2.0x and its steps are 1.6x as
# fast in bf16; an Intel Xeon with AMX measures about 5x (experiments/perf)
BF16_GAIN = 1.5

# overrides the measurement for model.dtype='auto' (the test suite, whose comparisons of two
# paths want float32 on every machine, sets it to float32)
AUTO_ENV = "LLM_JAX_AUTO_DTYPE"


def auto_choice(peaks: dict) -> tuple[str, str]:
  """(dtype, why) that 'auto' takes on a machine of these measured peaks."""
  ratio = peaks["bfloat16"] / peaks["float32"]
  dtype = "bfloat16" if ratio >= BF16_GAIN else "float32"
  return dtype, (f"this machine's bf16 matmul is {ratio:.1f}x its f32 "
                 f"({'at least' if dtype == 'bfloat16' else 'under'} {BF16_GAIN}x)")


def auto_dtype(peaks: dict | None = None) -> tuple[str, str]:
  """(dtype, why) of model.dtype='auto' on this machine: $LLM_JAX_AUTO_DTYPE if set, else from
  the measured matmul peaks (by default `cached`'s: measured once per machine)."""
  forced = os.environ.get(AUTO_ENV)
  if forced:
    if forced not in ("float32", "bfloat16"):
      raise UserError(f"{AUTO_ENV}={forced!r}: use float32 or bfloat16 (or unset it: the "
                      f"measured matmul peaks decide)")
    return forced, f"${AUTO_ENV}={forced}"
  return auto_choice(peaks or cached())


def fix_run_dtype(model_config, saved_model_config=None, peaks: dict | None = None) -> str | None:
  """Fixes a run's precision when it is created: model_config.dtype 'auto' becomes a concrete
  dtype, in place. A resumed run (saved_model_config: its config.json's) keeps its saved dtype;
  a new one (or one saved as 'auto' by an older llm-jax, whose saved dtype is set alike) takes
  this machine's `auto_dtype` (peaks: measured ones to decide by). An explicit float32 or
  bfloat16 stays as it is. Returns the line that says what 'auto' chose and why; None where the
  dtype was explicit."""
  if model_config.dtype != "auto":
    return None
  saved = saved_model_config.get("dtype") if saved_model_config is not None else None
  if saved in ("float32", "bfloat16"):
    dtype, why = saved, "the run's own, kept from its config.json"
  else:
    dtype, why = auto_dtype(peaks)
    if saved_model_config is not None:
      saved_model_config.dtype = dtype
  model_config.dtype = dtype
  return f"model.dtype auto -> {dtype}: {why}"


if __name__ == "__main__":
  print(json.dumps(cached() if "--cached" in sys.argv else measure(), indent=2))
