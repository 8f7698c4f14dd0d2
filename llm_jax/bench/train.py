"""`llm-jax bench`: how fast a config trains, evaluates and decodes here, and how close to the peak.

    llm-jax bench --config=configs/gpt_char_baby.py [--steps=20] [--config.model.dtype=bfloat16 ...]

The model has the config's shapes, freshly initialized, and the batches are random tokens (speed
does not depend on the weights or the text), so no corpus is read. The train step is the one the
training loop runs (the same loss, optimizer, placement on the devices and donated state). Each step
is timed alone (dispatch to results ready), after `--warmup` steps; compile time is the first
call less a steady step, reported apart (near 0 when JAX's persistent compilation cache holds
the program). Prints one JSON object, then a readable table on stderr.

FLOPs per token are models/flops.py's (6N + 12 L T d, nanoGPT's estimate_mfu). MFU =
flops_per_token x tokens/s / a peak: the matmul peak measured in the same run (peaks.py,
float32 or bfloat16 as the model computes) and, on a known accelerator, its datasheet peak.
"""

import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import decoding
from llm_jax import peaks as peak
from llm_jax.config import validate
from llm_jax.errors import UserError
from llm_jax.models import FAMILIES, active_params, build_model, flops_per_token
from llm_jax.models.flops import count_params
from llm_jax.training import parallel, profile
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import make_optimizer
from llm_jax.training.steps import init_state, make_evaluate, make_train_step


def _percentiles_ms(seconds) -> dict:
  ms = np.asarray(seconds) * 1e3
  return {"median": round(float(np.median(ms)), 2), "p10": round(float(np.percentile(ms, 10)), 2),
          "p90": round(float(np.percentile(ms, 90)), 2), "min": round(float(ms.min()), 2)}


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def _device_memory() -> dict | None:
  """Peak and current bytes in use on device 0, where the backend reports them (not on CPU)."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
  return {k: int(stats[k]) for k in keys if k in stats}


def _random_batch(rng, shape, vocab_size):
  tokens = rng.integers(0, vocab_size, (*shape[:-1], shape[-1] + 1)).astype(np.int32)
  return {"inputs": tokens[..., :-1], "targets": tokens[..., 1:]}


# the config.model fields the JSON names (with the dtype as resolved, and as asked)
MODEL_FIELDS = ("name", "n_layer", "n_head", "n_embd", "block_size", "dropout", "dropout_bits",
                "attention", "remat", "scan_layers", "moe_experts", "moe_top_k",
                "moe_shared_experts", "moe_dispatch", "moe_capacity_factor")


def _check_args(m, vocab_size, decode_tokens, steps, warmup) -> None:
  if FAMILIES[m.name].task != "lm":
    lms = ", ".join(n for n, f in FAMILIES.items() if f.task == "lm")
    raise UserError(f"llm-jax bench measures the language models ({lms}): use "
                    "--config.model.name=gpt or a GPT config")
  if vocab_size < 1:
    raise UserError(f"--vocab_size={vocab_size} is invalid: use 1 or more (65: Tiny "
                    f"Shakespeare's characters)")
  if decode_tokens < 0:
    raise UserError(f"--decode_tokens={decode_tokens} is invalid: use 0 (no decode) or more")
  if steps < 1 or warmup < 0:
    raise UserError(f"--steps={steps} and --warmup={warmup}: use at least 1 step, 0 or more warm-up")


def _time_calls(call, repeats: int):
  """(seconds of the first call (compilation included), [seconds of each of `repeats` more])."""
  t = time.perf_counter()
  jax.block_until_ready(call())
  first_s, times = time.perf_counter() - t, []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t)
  return first_s, times


def _decode_speed(model, host_params, block_size: int, decode_tokens: int) -> dict | None:
  """Batch-1 KV-cache decoding of decode_tokens tokens: tokens/s (best of two), compile time.
  host_params: () -> the parameters on the host, copied only where decoding is measured."""
  if decode_tokens <= 0:
    return None
  params = host_params()
  call = lambda: decoding.generate(model, params, jnp.zeros((1, 1), jnp.int32),
                                   jax.random.key(0), max_new_tokens=decode_tokens,
                                   block_size=block_size, temperature=1.0)
  decode_first_s, decode_s = _time_calls(call, 2)
  return {"batch": 1, "new_tokens": decode_tokens,
          "tokens_per_s": round(decode_tokens / min(decode_s), 1),
          "compile_s": round(decode_first_s - min(decode_s), 2)}


def run(config, steps: int = 20, warmup: int = 3, vocab_size: int = 65, decode_tokens: int = 100,
        eval_repeats: int = 5, peak_n: int = 2048, profile_dir: str | None = None,
        profile_steps: int = 5) -> dict:
  """Benchmarks config's language model; returns the figures (see the module docstring). With
  profile_dir, profile_steps more steps are traced there after the timed ones (profile.py)."""
  validate(config)
  m, tc = config.model, config.train
  _check_args(m, vocab_size, decode_tokens, steps, warmup)
  peaks = peak.measure(peak_n)
  dtype_asked = m.dtype
  # 'auto' as a run created here would take it (peaks.fix_run_dtype), and why
  dtype_line = peak.fix_run_dtype(m, peaks=peaks)
  T, B, A = m.block_size, tc.batch_size, tc.grad_accum_steps
  model = build_model(m, vocab_size, train_config=tc)
  loss_fn = make_loss_fn(model)
  tx = make_optimizer(tc)
  place = parallel.placement(config, model, tx)
  state = place.create_state(lambda: init_state(model, m, tx, jax.random.key(config.seed)))
  n_params, n_params_flops = count_params(state.params)
  train_step, evaluate = place.steps(make_train_step(loss_fn, tx, place.axis_name),
                                     make_evaluate(loss_fn, place.axis_name),
                                     jax.random.key(config.seed + 1))
  rng = np.random.default_rng(config.seed)
  batch = place.put_batch(_random_batch(rng, (A, B, T), vocab_size))
  eval_batch = place.put_batch(_random_batch(rng, (1, B, T), vocab_size))
  memory = place.memory(train_step, state, batch)

  def timed_step():
    nonlocal state
    t = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t

  first_s = timed_step()
  for _ in range(warmup):
    timed_step()
  cpu0 = _cpu_seconds()
  step_s = [timed_step() for _ in range(steps)]
  cpu_ms = (_cpu_seconds() - cpu0) / steps * 1e3
  median_s = float(np.median(step_s))
  traced = profile.trace(timed_step, profile_steps, profile_dir) if profile_dir else None

  eval_first_s, eval_s = _time_calls(lambda: evaluate(state, eval_batch), eval_repeats)

  decode = _decode_speed(model, lambda: place.to_host(state.params), T, decode_tokens)

  tokens_per_step = A * B * T
  fpt = flops_per_token(m, n_params_flops)
  achieved = fpt * tokens_per_step / median_s
  dtype = model.cfg.dtype
  peak_gflops = peaks[dtype]
  sheet = peaks["datasheet_tflops"]
  return {
      "benchmark": "train",
      "model": {**{k: m[k] for k in MODEL_FIELDS}, "dtype": dtype, "dtype_asked": dtype_asked},
      "dtype_chosen": dtype_line,
      "optimizer": tc.optimizer,
      "batch_size": B, "grad_accum_steps": A, "tokens_per_step": tokens_per_step,
      "params": n_params, "params_for_flops": n_params_flops, "flops_per_token": fpt,
      # a mixture of experts: the parameters a token uses (its FLOPs count these alone)
      "active_params": active_params(m, n_params),
      "device": peaks["device_kind"], "parallel": place.description, "devices": place.n_devices,
      "steps": steps, "warmup": warmup,
      "compile_s": round(first_s - median_s, 2),
      "train_ms_per_step": _percentiles_ms(step_s),
      "tokens_per_s": round(tokens_per_step / median_s, 1),
      "cpu_ms_per_step": round(cpu_ms, 1),
      "eval_ms_per_batch": round(float(np.median(eval_s)) * 1e3, 2),
      "eval_compile_s": round(eval_first_s - float(np.median(eval_s)), 2),
      "decode": decode,
      "achieved_gflops": round(achieved / 1e9, 2),
      "peak_gflops": {"float32": peaks["float32"], "bfloat16": peaks["bfloat16"],
                      "matmul_n": peaks["matmul_n"]},
      "mfu": round(achieved / (peak_gflops * 1e9), 4),
      "mfu_datasheet": (round(achieved / (sheet[dtype] * 1e12), 4) if sheet else None),
      "host_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "device_memory": _device_memory(),
      "profile": traced,
      # per device: the train state's bytes (params + optimizer), that of one unsharded copy,
      # and the compiled step's (XLA's memory_analysis; argument, output, temporaries)
      "state_memory": memory,
      "loadavg": os.getloadavg(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__,
  }


def table(r: dict) -> str:
  """The figures as aligned `name  value` lines."""
  ms = r["train_ms_per_step"]
  rows = [
      ("model", f"{r['model']['name']} {r['model']['n_layer']}L/{r['model']['n_head']}H/"
                f"{r['model']['n_embd']}d T={r['model']['block_size']} B={r['batch_size']} "
                f"{r['model']['dtype']}, {r['params'] / 1e6:.2f}M parameters" +
                (f" ({r['active_params'] / 1e6:.2f}M active)"
                 if r.get("active_params", r["params"]) != r["params"] else "")),
      ("device", f"{r['device']} x {r['devices']} ({r['parallel']})"),
  ] + ([("precision", r["dtype_chosen"])] if r.get("dtype_chosen") else []) + [
      ("train step", f"{ms['median']:.2f} ms median (p10 {ms['p10']:.2f}, p90 {ms['p90']:.2f}) "
                     f"over {r['steps']} steps; {r['cpu_ms_per_step']:.1f} ms CPU time"),
      ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
      ("compile", f"{r['compile_s']:.2f} s (train), {r['eval_compile_s']:.2f} s (eval)"),
      ("eval batch", f"{r['eval_ms_per_batch']:.2f} ms"),
      ("decode", "-" if not r["decode"] else
       f"{r['decode']['tokens_per_s']:,.0f} tokens/s (batch 1, {r['decode']['new_tokens']} "
       f"tokens, KV cache)"),
      ("FLOPs/token", f"{r['flops_per_token']:,} (6N + 12LTd)"),
      ("achieved", f"{r['achieved_gflops']:.1f} GFLOP/s"),
      ("peak (matmul)", f"{r['peak_gflops']['float32']:.1f} GFLOP/s f32, "
                        f"{r['peak_gflops']['bfloat16']:.1f} GFLOP/s bf16"),
      ("MFU", f"{100 * r['mfu']:.1f}% of the measured {r['model']['dtype']} peak" +
              (f"; {100 * r['mfu_datasheet']:.2f}% of the datasheet's"
               if r["mfu_datasheet"] is not None else "")),
      ("state", f"{r['state_memory']['state_bytes_per_device'] / 2**20:.1f} MiB per device of "
                f"{r['state_memory']['unsharded_bytes'] / 2**20:.1f} MiB unsharded" +
                (f"; step temporaries {r['state_memory']['temp_size'] / 2**20:.1f} MiB "
                 f"(model.remat={r['model'].get('remat', 'none')!r}"
                 f"{', scanned layers' if r['model'].get('scan_layers') else ''})"
                 if "temp_size" in r["state_memory"] else "")),
      ("memory", f"host peak RSS {r['host_peak_rss_mb']:.0f} MB" +
                 (f"; device peak {r['device_memory'].get('peak_bytes_in_use', 0) / 2**20:.0f} MB"
                  if r["device_memory"] else "")),
      ("load average", " ".join(f"{x:.2f}" for x in r["loadavg"])),
  ] + ([("profile", f"{r['profile']['dir']}; ms per step: " + ", ".join(
      f"{name} {ms}" for name, ms in r["profile"]["top_ops"][:6]))] if r.get("profile") else [])
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(config, steps, warmup, vocab_size, decode_tokens, json_out=None, **profiling) -> dict:
  """The `llm-jax bench` command: JSON on stdout (and in json_out), the table on stderr."""
  r = run(config, steps=steps, warmup=warmup, vocab_size=vocab_size, decode_tokens=decode_tokens,
          **profiling)
  text = json.dumps(r, indent=2)
  print(text, flush=True)
  if json_out:
    with open(json_out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  print(table(r), file=sys.stderr, flush=True)
  return r
