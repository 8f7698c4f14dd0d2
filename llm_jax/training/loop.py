"""train_and_evaluate(config, workdir): the whole training run, resumable from its workdir.

    data -> model + loss -> jitted train/eval steps -> loop: step, log, evaluate, checkpoint -> sample

The same loop trains K runs at once (`train_runs`, for `llm-jax sweep --vectorize`): their states
stacked on a leading axis and the step vmapped (vectorized.py builds those functions), each run
with its own workdir, metrics, events, checkpoints and summary exactly as a single run's (Run).

The batch of step s is drawn from (seed, s) and the dropout key is folded with s, so a run resumed
from a checkpoint continues exactly as the uninterrupted run would (bitwise on CPU), whether it
stopped on a signal (signals.py: the step finishes and a checkpoint is saved), was killed (the
last complete checkpoint is used; a damaged one is skipped, checkpoint.py) or met a non-finite
loss (guards.py: stop, or skip the update). With several processes, every process stops at the
same step: the signal one of them received is shared at each log step (parallel.first_stop_signal).
Process 0 writes metrics.jsonl and TensorBoard events (events.py) in the workdir, and prints a
plain progress line every train.log_seconds where the progress bar draws nothing (no terminal).
"""

import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from llm_jax import harness
from llm_jax.config import validate
from llm_jax.models import flops_per_token
from llm_jax.models.flops import count_params
from llm_jax.tasks import build_task
from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write, read_metrics, write_json
from llm_jax.training import (checkpoint, finetune, guards, parallel, profile, signals, vectorized,
                              workdir as workdir_lib)
from llm_jax.training.events import EventWriter
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import lr_schedule, make_optimizer
from llm_jax.training.steps import create_state, init_state, make_evaluate, make_train_step


class MetricsLog:
  """<workdir>/metrics.jsonl, one JSON object a line. On resume, records past the restored step
  go (and a last line torn by a killed run), in one atomic rewrite."""

  def __init__(self, workdir, resume_step):
    self.path = os.path.join(workdir, "metrics.jsonl")
    kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
    with atomic_write(self.path) as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def write(self, record):
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")


# tokens of the text sample written to TensorBoard at each evaluation (at most train.sample_tokens)
EVAL_SAMPLE_TOKENS = 100


def _si(x: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.2f}{unit}"
  return f"{x:.0f}"


def duration(seconds: float) -> str:
  """'4m05s', '2h07m'."""
  m, s = divmod(int(seconds), 60)
  return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _save(manager, state, meta, last_saved):
  """Starts an asynchronous save; an OSError (disk full, ...) is a UserError naming the intact
  checkpoint (Orbax commits a step only once it is completely written)."""
  try:
    checkpoint.save(manager, state, meta)
  except Exception as e:  # noqa: BLE001 -- Orbax may wrap the OSError of its writer thread
    _raise_if_os_error(e, manager, int(state.step), last_saved)
    raise


def _wait(manager, step, last_saved):
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    _raise_if_os_error(e, manager, step, last_saved)
    raise


def _raise_if_os_error(e, manager, step, last_saved):
  os_error = workdir_lib.os_error_in(e)
  if os_error is None:
    return
  try:  # the previous save may still be in flight: let it complete
    manager.wait_until_finished()
  except Exception:  # noqa: BLE001 -- it failed too: the message names the step before
    pass
  kept = (f"the checkpoint of step {last_saved} is intact" if last_saved is not None else
          "no checkpoint was written")
  raise UserError(f"cannot write the checkpoint of step {step} in {manager.directory} "
                  f"({workdir_lib.describe_os_error(os_error)}): free some space or use another "
                  f"--workdir; {kept}") from e


class Run:
  """One run's files in its workdir: config.json and tokenizer.json, metrics.jsonl, TensorBoard
  events (process 0 alone writes those), its checkpoints (every process), summary.json."""

  def __init__(self, config, workdir: str, is_main_process: bool):
    self.config, self.is_main = config, is_main_process
    self.workdir = os.path.abspath(workdir)
    workdir_lib.check_writable(self.workdir)
    saved = workdir_lib.read_config(self.workdir)
    if saved is not None:
      workdir_lib.check_same_run(config, saved)
    self.tokenizer = workdir_lib.read_tokenizer(self.workdir)
    if config.train.init_from:  # fine-tuning: the source's tokenizer (a resumed run saved it)
      self.tokenizer = self.tokenizer or finetune.source_run(config)[1]
    self.manager = None  # opened once the data and model are built (`checkpoints`)
    self.meta = {"best_val_loss": math.inf, "skipped_updates": 0}
    self.last_saved = None
    self.log = self.events = None

  def checkpoints(self):
    """The checkpoint manager (its threads are started here, after the inputs are checked)."""
    self.manager = checkpoint.make_manager(self.workdir, self.config.train.keep_checkpoints)
    return self.manager

  def open(self, start: int, tokenizer) -> None:
    """After the restore (a workdir refused there keeps its files as they were)."""
    self.last_saved = start or None
    if self.is_main:
      workdir_lib.write_run_files(self.workdir, self.config, tokenizer)
      self.log, self.events = MetricsLog(self.workdir, start), EventWriter(self.workdir, start)

  def save(self, state) -> None:
    _save(self.manager, state, self.meta, self.last_saved)
    self.last_saved = int(np.asarray(state.step))

  def wait(self, step: int) -> None:
    _wait(self.manager, step, self.last_saved)

  def check_finite(self, host: list, first_done: int, several: bool) -> None:
    """nan_policy 'stop': the first non-finite loss or gradient norm among the fetched steps ends
    the run, after the last good checkpoint is complete."""
    bad = guards.first_nonfinite(host, first_done) if host else None
    if bad is None:
      return
    step, name, value = bad
    self.wait(step)
    kept = (f"the last good checkpoint (step {self.last_saved}) is kept"
            if self.last_saved is not None else "no checkpoint was written")
    raise UserError(f"the training {name} is {value} at step {step}" +
                    (f" in {self.workdir}" if several else "") + f": {kept}; lower "
                    f"config.train.learning_rate, or set config.train.nan_policy='skip' to skip "
                    f"such updates")

  def close(self) -> None:
    if self.events:
      self.events.close()


def train_and_evaluate(config, workdir: str, **profiling) -> dict:
  """Trains config's model in workdir (resuming what is there). Returns the run's summary."""
  return train_runs([config], [workdir], **profiling)[0]


def train_runs(configs, workdirs, profile_dir: str | None = None, profile_steps: int = 5
               ) -> list[dict]:
  """Trains configs[k] in workdirs[k] (resuming what is there). One config: a single run; several:
  one vmapped program (they may differ only in vectorized.VMAPPABLE fields). Returns the
  summaries. With profile_dir, profile_steps steps after the first logged interval are traced
  there (training/profile.py)."""
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("one workdir per config")
  for c in configs:
    validate(c)
  K, config, tc = len(configs), configs[0], configs[0].train
  several = K > 1
  if several:
    vectorized.check_vectorizable(configs)
  parallel.init_distributed(config.distributed)
  is_main_process = jax.process_index() == 0  # only it prints and writes files beside checkpoints
  runs = [Run(c, w, is_main_process) for c, w in zip(configs, workdirs)]
  tasks = [build_task(c, r.tokenizer) for c, r in zip(configs, runs)]
  task = tasks[0]
  at = (lambda tree, k: tree) if not several else (
      lambda tree, k: jax.tree.map(lambda x: x[k], tree))  # run k's part
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)

  tx = make_optimizer(tc)  # (the vmapped runs build theirs from their knobs, with its shapes)
  place = parallel.placement(config, task.model, tx, lead=int(several))
  skip = tc.nan_policy == "skip"
  axis = place.axis_name
  keys = [jax.random.split(jax.random.key(c.seed)) for c in configs]  # (init, dropout) per run
  if several:
    fns = vectorized.functions(configs, tasks, skip)
    dropout_rng = jnp.stack([k[1] for k in keys])
  else:
    loss_fn = make_loss_fn(task.model, task.input_keys)
    fns = vectorized.Functions(
        init=lambda rng: init_state(task.model, config.model, tx, rng),
        train_step=make_train_step(loss_fn, tx, axis, skip_nonfinite=skip),
        evaluate=make_evaluate(loss_fn, axis), param_norm=optax.tree.norm)
    dropout_rng = keys[0][1]
  # a constant of the program, on no device
  init_key = np.asarray(jax.random.key_data(jnp.stack([k[0] for k in keys]) if several
                                            else keys[0][0]))
  state = place.create_state(lambda: fns.init(jax.random.wrap_key_data(init_key)))
  run_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) // K
  for r in runs:
    workdir_lib.check_free_space(r.workdir, run_bytes)
  train_step, evaluate_split = place.steps(fns.train_step, fns.evaluate, dropout_rng)
  eval_batches = {name: place.put_batch(stack([t.eval_batches[name] for t in tasks]) if several
                                        else task.eval_batches[name])
                  for name in task.eval_batches}
  param_norm = place.replicated_fn(fns.param_norm)

  if any([r.checkpoints().all_steps() for r in runs]):  # (a list: every run's manager opens)
    state = _restore(runs, state, place, at, stack, is_main_process)
  elif tc.init_from:  # its parameters, a fresh optimizer state, step 0
    state = place.create_state(lambda p: create_state(p, tx), finetune.load_params(config))
  start = int(np.asarray(place.local(state.step)).reshape(-1)[0])
  for r, t in zip(runs, tasks):
    r.open(start, t.tokenizer)
  n_params, n_params_flops = count_params(jax.eval_shape(lambda p: at(p, 0), state.params))
  schedules = [lr_schedule(c.train) for c in configs]
  tokens_per_step = tc.batch_size * tc.grad_accum_steps * task.tokens_per_example
  print_main = print if is_main_process else (lambda *a, **k: None)
  where = runs[0].workdir if not several else f"{K} vectorized runs"
  print_main(f"llm-jax: {config.model.name}, {task.summary_line}, " +
             (f"resuming at step {start}" if start else "starting") + f" in {where}", flush=True)
  n_dev, split = place.n_devices, place.batch_divisor
  flops = flops_per_token(config.model, n_params_flops)
  print_main(f"llm-jax: {n_params / 1e6:.2f}M parameters, "
             f"{_si(flops) + 'FLOPs' if flops else 'n/a FLOPs'}/token, {jax.process_count()} "
             f"process(es), {n_dev} device(s) ({place.description}), global batch "
             f"{tc.batch_size * tc.grad_accum_steps} ({tc.batch_size // split} examples per "
             f"batch shard x {tc.grad_accum_steps} accumulation steps), {tokens_per_step:,} "
             f"tokens/step" + (f" each, {K} runs vmapped" if several else ""), flush=True)

  def run_eval(step):
    losses = {name: place.local(evaluate_split(state, b)) for name, b in eval_batches.items()}
    params = place.to_host(state.params)  # every process: a collective under a mesh
    for k, (r, t) in enumerate(zip(runs, tasks)):
      run_losses = {name: float(at(v, k)) for name, v in losses.items()}
      r.meta["best_val_loss"] = min(r.meta["best_val_loss"], run_losses["val"])
      if not is_main_process:
        continue
      run_params = at(params, k)
      extra = t.eval_metrics(run_params, run_losses)
      extra.update(harness.training_metrics(configs[k], t, run_params, step))  # harness_tasks
      r.log.write({"step": step, "train_loss": run_losses["train"],
                   "val_loss": run_losses["val"], **extra})
      n = min(tc.sample_tokens, EVAL_SAMPLE_TOKENS)
      r.events.evaluation(step, run_losses, extra,
                          t.sample(run_params, n, configs[k].seed) if n else None)
      tqdm.write(f"step {step}: " + (f"run {k}: " if several else "") +
                 f"train loss {run_losses['train']:.4f}, val loss {run_losses['val']:.4f}" +
                 "".join(f", {name} {v:.4f}" for name, v in extra.items()))
    return losses

  def check_finite(host, first_done):
    if skip or not host:
      return
    for k, r in enumerate(runs):
      r.check_finite([at(h, k) for h in host], first_done, several)

  def save_all():
    host = place.saveable(state) if not several else place.to_host(state)
    for k, r in enumerate(runs):
      r.save(at(host, k))

  losses = run_eval(start) if start == 0 else {}
  pending, ms_per_step = [], []
  t_last, n_since, t_start = time.perf_counter(), 0, time.perf_counter()
  bar = tqdm(total=tc.max_steps, initial=start, disable=None if is_main_process else True,
             dynamic_ncols=True, unit="step")
  # a SLURM log, CI, a sweep's train.log: tqdm draws nothing there, so a plain line instead
  plain = is_main_process and (bar.disable or not sys.stdout.isatty())
  t_line = t_start
  one_process = jax.process_count() == 1
  prog = "llm-jax sweep worker" if several else "llm-jax train"
  tracer = profile.StepTracer(profile_dir if is_main_process else None,
                              min(start + tc.log_interval, tc.max_steps - 1), profile_steps,
                              print_main)
  try:
    with signals.StopRequest(prog) as stop:
      for step in range(start, tc.max_steps):
        host_batch = (stack([t.train_batch(step) for t in tasks]) if several
                      else task.train_batch(step))
        tracer.before(step)
        state, metrics = train_step(state, place.put_batch(host_batch))
        pending.append(metrics)
        n_since += 1
        steps_done = step + 1
        tracer.after(steps_done, state, last=steps_done == tc.max_steps)
        # one process stops at the next step; several, all at the next log step
        stopping = stop.signum if one_process else None
        if steps_done % tc.log_interval == 0 or steps_done == tc.max_steps:
          if not one_process:
            stopping = parallel.first_stop_signal(stop.signum)
          host = [place.local(p) for p in pending]  # replicated: a local read
          check_finite(host, steps_done - n_since + 1)
          norms = place.local(param_norm(state.params))
          dt = (time.perf_counter() - t_last) / n_since
          ms_per_step.append(dt * 1e3)
          for k, r in enumerate(runs):
            run_host = [at(h, k) for h in host]
            m = {name: guards.finite_mean([h[name] for h in run_host]) for name in run_host[0]
                 if name != "skipped"}
            if skip:
              r.meta["skipped_updates"] += int(sum(h["skipped"] for h in run_host))
              m["skipped_updates"] = r.meta["skipped_updates"]
            m["param_norm"] = float(at(norms, k))
            record = {"step": steps_done, **m, "lr": float(schedules[k](step)),
                      "ms_per_step": dt * 1e3, "tokens_per_s": tokens_per_step / dt}
            if is_main_process:
              r.log.write(record)
              r.events.train(record)
          bar.update(n_since)
          bar.set_postfix(loss=f"{m['loss']:.4f}",
                          val=f"{float(at(losses['val'], 0)) if losses else math.nan:.4f}",
                          tok_s=f"{K * record['tokens_per_s']:.0f}")
          now = time.perf_counter()
          if plain and now - t_line >= tc.log_seconds:
            eta = (now - t_start) / (steps_done - start) * (tc.max_steps - steps_done)
            print(f"step {steps_done}/{tc.max_steps}: loss {m['loss']:.4f}, "
                  f"{K * record['tokens_per_s']:,.0f} tokens/s, {duration(now - t_start)} "
                  f"elapsed, ETA {duration(eta)}", flush=True)
            t_line = now
          pending, n_since = [], 0
          t_last = time.perf_counter()
        if steps_done % tc.eval_interval == 0 or steps_done == tc.max_steps:
          losses = run_eval(steps_done)
        if steps_done % tc.checkpoint_every == 0 or steps_done == tc.max_steps or stopping:
          # never save a state past a NaN
          check_finite([place.local(p) for p in pending], steps_done - n_since + 1)
          save_all()
        if stopping:
          for r in runs:
            r.wait(steps_done)
          raise signals.Interrupted(stopping, steps_done, ", ".join(r.workdir for r in runs))
        t_last = time.perf_counter() if n_since == 0 else t_last
  finally:
    tracer.close()
    bar.close()
    for r in runs:
      r.close()
  for r in runs:
    r.wait(tc.max_steps)
    r.manager.close()

  # the first logged interval holds the compilation: leave it out of the speed figures
  steady = ms_per_step[1:] or ms_per_step
  final = place.to_host(state)  # every process: a collective under a mesh
  wall_s = time.perf_counter() - t_start
  summaries = []
  for k, (r, t) in enumerate(zip(runs, tasks)):
    meta, run_final = r.meta, at(final, k)
    summary = {"step": int(run_final.step), "params": int(n_params),
               "train_loss": float(at(losses["train"], k)) if losses else None,
               "val_loss": float(at(losses["val"], k)) if losses else None,
               "best_val_loss": meta["best_val_loss"], "wall_s": wall_s,
               "tokens": int(run_final.step) * tokens_per_step,
               "skipped_updates": meta["skipped_updates"],
               "median_ms_per_step": float(np.median(steady)) if steady else None,
               "tokens_per_s": tokens_per_step / np.median(steady) * 1e3 if steady else None}
    if several:
      summary["vectorized"] = K
    print_main(f"llm-jax: done at step {summary['step']}: {summary['tokens']:,} tokens in all "
               f"({(summary['step'] - start) * tokens_per_step:,} in {wall_s:.1f}s of wall time), "
               f"best val loss {summary['best_val_loss']:.4f}" +
               (f", {meta['skipped_updates']} non-finite updates skipped" if skip else "") +
               (f" ({r.workdir})" if several else ""), flush=True)
    if is_main_process:
      if tc.sample_tokens:
        summary["sample"] = t.sample(run_final.params, tc.sample_tokens, configs[k].seed)
        print(f"--- sample ---\n{summary['sample']}\n---", flush=True)
      write_json(os.path.join(r.workdir, "summary.json"), summary)
    summaries.append(summary)
  return summaries


def _restore(runs, state, place, at, stack, is_main_process):
  """Each run's newest checkpoint that restores (damaged ones skipped, checkpoint.py). A single
  run restores straight into the placement's shardings. Vectorized runs restore on the host and
  resume together at the oldest of their steps: a run whose newest is later drops the later
  checkpoints, which it writes again."""
  if len(runs) == 1:
    restored, meta = checkpoint.restore_latest_good(runs[0].manager, place.saveable(state),
                                                    move_bad=is_main_process)
    runs[0].meta.update(meta)
    return place.place(restored)
  like = jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype), state)
  if not all(r.manager.all_steps() for r in runs):
    missing = next(r.workdir for r in runs if not r.manager.all_steps())
    raise UserError(f"vectorized runs resume together, and {missing} has no checkpoint while "
                    f"the others have: run it alone, or remove the others' checkpoints")
  restored = [checkpoint.restore_latest_good(r.manager, like, move_bad=is_main_process)
              for r in runs]
  step = min(int(s.step) for s, _ in restored)
  states = []
  for r, (s, meta) in zip(runs, restored):
    if int(s.step) > step:
      print(f"llm-jax: warning: {r.workdir} resumes at step {step} with the other vectorized "
            f"runs; its later checkpoints are deleted", file=sys.stderr, flush=True)
      for later in [x for x in r.manager.all_steps() if x > step]:
        r.manager.delete(later)
      s, meta = checkpoint.restore(r.manager, like, step)
    r.meta.update(meta)
    states.append(s)
  return place.place(stack(states))
