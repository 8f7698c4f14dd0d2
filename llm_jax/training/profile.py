"""Where a step's time goes: a jax.profiler trace of a few calls, and its XLA operations summed.

    llm-jax bench --config=... --profile_dir=/tmp/prof [--profile_steps=5]
    llm-jax train --config=... --workdir=... --profile_dir=/tmp/prof [--profile_steps=5]

writes a trace that TensorBoard's profile plugin (`tensorboard --logdir=/tmp/prof`) and Perfetto
(ui.perfetto.dev, open plugins/profile/*/perfetto_trace.json.gz) show, and prints the operations
that took the most time per step, summed over the threads (devices) that ran them. The training
loop traces the steps after its first logged interval (compilation is over by then). On a CPU,
XLA records its operations only with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true
(`flags_for_tracing` adds it; it must be set before JAX starts). The Python tracer is off: it
records every Python call, and the trace would hold nothing else.
"""

import collections
import glob
import gzip
import json
import os
import re

import jax

CPU_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
# events of the runtime and of the host rather than of one XLA operation
_NOT_OPS = re.compile(r"^\$|Pjit|PjRt|Thunk|Execute|Dispatch|dispatch|Transfer|Buffer|Await|"
                      r"Compile|Codegen|Pass$|Task|Run|Wait|Ready|Copy.*Host|ReadTo")


def flags_for_tracing(environ) -> str:
  """XLA_FLAGS with the CPU backend's operation tracing on."""
  flags = environ.get("XLA_FLAGS", "")
  return flags if CPU_TRACE_FLAG in flags else f"{flags} {CPU_TRACE_FLAG}".strip()


def _start(log_dir: str) -> str:
  log_dir = os.path.abspath(log_dir)  # (the profiler, as Orbax, wants it absolute)
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  jax.profiler.start_trace(log_dir, create_perfetto_trace=True, profiler_options=options)
  return log_dir


def trace(fn, calls: int, log_dir: str, top: int = 15) -> dict:
  """Runs fn() `calls` times under the profiler into log_dir; returns {'dir', 'calls',
  'top_ops': [[name, ms per call], ...]}, the operations' names without their numeric suffix."""
  log_dir = _start(log_dir)
  try:
    for _ in range(calls):
      jax.block_until_ready(fn())
  finally:
    jax.profiler.stop_trace()
  return {"dir": log_dir, "calls": calls, "top_ops": top_ops(log_dir, calls, top)}


def top_ops(log_dir: str, calls: int, top: int) -> list:
  """The `top` operations by total duration in log_dir's newest Perfetto trace, in ms per call."""
  files = sorted(glob.glob(os.path.join(log_dir, "plugins/profile/*/perfetto_trace.json.gz")),
                 key=os.path.getmtime)
  if not files:
    return []
  with gzip.open(files[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not _NOT_OPS.search(e["name"]):
      total[re.sub(r"[._]\d+$", "", e["name"])] += e.get("dur", 0)  # microseconds
  return [[name, round(us / 1e3 / calls, 3)] for name, us in total.most_common(top)]


class StepTracer:
  """The training loop's tracing: `before(step)` starts the trace at step `first`, `after(
  steps_done, state)` stops it `n` steps later (the state ready) and prints the top operations;
  `close()` stops a trace the run left running."""

  def __init__(self, log_dir: str | None, first: int, n: int, print_fn=print):
    self.log_dir, self.first, self.n, self.print = log_dir, first, n, print_fn
    self.on = False

  def before(self, step: int):
    if self.log_dir and step == self.first:
      self.log_dir = _start(self.log_dir)
      self.on = True

  def after(self, steps_done: int, state, last: bool):
    if self.on and (steps_done == self.first + self.n or last):
      jax.block_until_ready(state)
      self.close()
      ops = top_ops(self.log_dir, steps_done - self.first, 8)
      self.print(f"llm-jax: profile of steps {self.first}-{steps_done - 1} in {self.log_dir}; "
                 f"ms per step by operation: " + ", ".join(f"{name} {ms}" for name, ms in ops),
                 flush=True)

  def close(self):
    if self.on:
      jax.profiler.stop_trace()
      self.on = False
