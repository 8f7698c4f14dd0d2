"""train_and_evaluate(config, workdir): the whole training run, resumable from its workdir.

    data -> model + loss -> jitted train/eval steps -> loop: step, log, evaluate, checkpoint -> sample

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
import numpy as np
import optax
from tqdm import tqdm

from llm_jax.config import validate
from llm_jax.models import flops_per_token
from llm_jax.models.flops import count_params
from llm_jax.tasks import build_task
from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write, read_metrics, write_json
from llm_jax.training import (checkpoint, finetune, guards, parallel, signals,
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config's model in workdir (resuming what is there). Returns the run's summary."""
  validate(config)
  parallel.init_distributed(config.distributed)
  mode = parallel.resolve(config.parallel)
  parallel.check_batch(config.train.batch_size, mode)
  is_main_process = jax.process_index() == 0  # only it prints and writes files beside checkpoints
  workdir = os.path.abspath(workdir)
  workdir_lib.check_writable(workdir)
  saved = workdir_lib.read_config(workdir)
  if saved is not None:
    workdir_lib.check_same_run(config, saved)
  tc = config.train
  tokenizer = workdir_lib.read_tokenizer(workdir)
  if tc.init_from:  # fine-tuning: the source's tokenizer (a resumed run saved the same)
    tokenizer = tokenizer or finetune.source_run(config)[1]
  task = build_task(config, tokenizer)

  loss_fn = make_loss_fn(task.model, task.input_keys)
  tx = make_optimizer(tc)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  state = jax.jit(lambda r: init_state(task.model, config.model, tx, r))(init_rng)
  state = jax.device_get(state)  # the host copy: what checkpoints hold, for any device count
  workdir_lib.check_free_space(workdir, sum(np.asarray(x).nbytes for x in jax.tree.leaves(state)))
  axis = parallel.AXIS if mode == "pmap" else None
  skip = tc.nan_policy == "skip"
  step_fn = make_train_step(loss_fn, tx, axis, skip_nonfinite=skip)
  train_step, evaluate_split = parallel.wrap_steps(step_fn, make_evaluate(loss_fn, axis), mode)
  eval_batches = {k: parallel.shard_batch(b, mode, axis=1) for k, b in task.eval_batches.items()}
  param_norm = jax.jit(optax.tree.norm)

  manager = checkpoint.make_manager(workdir, tc.keep_checkpoints)
  meta = {"best_val_loss": math.inf, "skipped_updates": 0}
  if manager.all_steps():
    state, restored_meta = checkpoint.restore_latest_good(manager, state, move_bad=is_main_process)
    meta.update(restored_meta)
  elif tc.init_from:  # its parameters, a fresh optimizer state, step 0
    state = jax.device_get(create_state(finetune.load_params(config), tx))
  if is_main_process:  # after the restore: a workdir refused above keeps its files as they were
    workdir_lib.write_run_files(workdir, config, task.tokenizer)
  start = int(state.step)
  last_saved = start if start else None
  n_params, n_params_flops = count_params(state.params)
  state = parallel.place_state(state, mode)
  log = MetricsLog(workdir, start) if is_main_process else None
  events = EventWriter(workdir, start) if is_main_process else None
  schedule = lr_schedule(tc)
  tokens_per_step = tc.batch_size * tc.grad_accum_steps * task.tokens_per_example
  print_main = print if is_main_process else (lambda *a, **k: None)
  print_main(f"llm-jax: {config.model.name}, {task.summary_line}, " +
             (f"resuming at step {start}" if start else "starting") + f" in {workdir}", flush=True)
  n_dev = parallel.n_devices(mode)
  flops = flops_per_token(config.model, n_params_flops)
  print_main(f"llm-jax: {n_params / 1e6:.2f}M parameters, "
             f"{_si(flops) + 'FLOPs' if flops else 'n/a FLOPs'}/token, {jax.process_count()} "
             f"process(es), {n_dev} device(s) ({mode}), global batch "
             f"{tc.batch_size * tc.grad_accum_steps} ({tc.batch_size // n_dev} examples per "
             f"device x {tc.grad_accum_steps} accumulation steps), {tokens_per_step:,} tokens/step",
             flush=True)

  def run_eval(step):
    losses = {name: float(parallel.host_metrics(evaluate_split(state, b), mode))
              for name, b in eval_batches.items()}
    meta["best_val_loss"] = min(meta["best_val_loss"], losses["val"])
    if is_main_process:
      params = parallel.host_state(state, mode).params
      extra = task.eval_metrics(params, losses)
      log.write({"step": step, "train_loss": losses["train"], "val_loss": losses["val"], **extra})
      n = min(tc.sample_tokens, EVAL_SAMPLE_TOKENS)
      events.evaluation(step, losses, extra, task.sample(params, n, config.seed) if n else None)
      tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}" +
                 "".join(f", {k} {v:.4f}" for k, v in extra.items()))
    return losses

  def metrics_to_host(pending):  # the pending steps' metrics (one device's copy under pmap)
    return [parallel.host_metrics(p, mode) for p in pending]

  def check_finite(host, first_done):
    """'stop': the first non-finite loss or gradient norm among the fetched steps ends the run,
    after the last good checkpoint is complete."""
    if skip or not host:
      return
    bad = guards.first_nonfinite(host, first_done)
    if bad is not None:
      step, name, value = bad
      _wait(manager, step, last_saved)
      kept = (f"the last good checkpoint (step {last_saved}) is kept" if last_saved is not None
              else "no checkpoint was written")
      raise UserError(f"the training {name} is {value} at step {step}: {kept}; lower "
                      f"config.train.learning_rate, or set config.train.nan_policy='skip' to skip "
                      f"such updates")

  losses = run_eval(start) if start == 0 else {}
  pending, ms_per_step = [], []
  t_last, n_since, t_start = time.perf_counter(), 0, time.perf_counter()
  bar = tqdm(total=tc.max_steps, initial=start, disable=None if is_main_process else True,
             dynamic_ncols=True, unit="step")
  # a SLURM log, CI, a sweep's train.log: tqdm draws nothing there, so a plain line instead
  plain = is_main_process and (bar.disable or not sys.stdout.isatty())
  t_line = t_start
  one_process = jax.process_count() == 1
  try:
    with signals.StopRequest() as stop:
      for step in range(start, tc.max_steps):
        batch = parallel.shard_batch(task.train_batch(step), mode, axis=1)
        state, metrics = train_step(state, batch, dropout_rng)
        pending.append(metrics)
        n_since += 1
        steps_done = step + 1
        # one process stops at the next step; several, all at the next log step
        stopping = stop.signum if one_process else None
        if steps_done % tc.log_interval == 0 or steps_done == tc.max_steps:
          if not one_process:
            stopping = parallel.first_stop_signal(stop.signum)
          host = metrics_to_host(pending)
          check_finite(host, steps_done - n_since + 1)
          m = {k: guards.finite_mean([h[k] for h in host]) for k in host[0] if k != "skipped"}
          if skip:
            meta["skipped_updates"] += int(sum(h["skipped"] for h in host))
            m["skipped_updates"] = meta["skipped_updates"]
          m["param_norm"] = float(param_norm(parallel.local_replica(state.params, mode)))
          dt = (time.perf_counter() - t_last) / n_since
          ms_per_step.append(dt * 1e3)
          record = {"step": steps_done, **m, "lr": float(schedule(step)), "ms_per_step": dt * 1e3,
                    "tokens_per_s": tokens_per_step / dt}
          if is_main_process:
            log.write(record)
            events.train(record)
          bar.update(n_since)
          bar.set_postfix(loss=f"{m['loss']:.4f}", val=f"{losses.get('val', math.nan):.4f}",
                          tok_s=f"{record['tokens_per_s']:.0f}")
          now = time.perf_counter()
          if plain and now - t_line >= tc.log_seconds:
            eta = (now - t_start) / (steps_done - start) * (tc.max_steps - steps_done)
            print(f"step {steps_done}/{tc.max_steps}: loss {m['loss']:.4f}, "
                  f"{record['tokens_per_s']:,.0f} tokens/s, {duration(now - t_start)} elapsed, "
                  f"ETA {duration(eta)}", flush=True)
            t_line = now
          pending, n_since = [], 0
          t_last = time.perf_counter()
        if steps_done % tc.eval_interval == 0 or steps_done == tc.max_steps:
          losses = run_eval(steps_done)
        if steps_done % tc.checkpoint_every == 0 or steps_done == tc.max_steps or stopping:
          # never save a state past a NaN
          check_finite(metrics_to_host(pending), steps_done - n_since + 1)
          _save(manager, parallel.host_state(state, mode), meta, last_saved)
          last_saved = steps_done
        if stopping:
          _wait(manager, steps_done, last_saved)
          raise signals.Interrupted(stopping, steps_done, workdir)
        t_last = time.perf_counter() if n_since == 0 else t_last
  finally:
    bar.close()
    if events:
      events.close()
  _wait(manager, tc.max_steps, last_saved)
  manager.close()

  # the first logged interval holds the compilation: leave it out of the speed figures
  steady = ms_per_step[1:] or ms_per_step
  final = parallel.host_state(state, mode)
  wall_s = time.perf_counter() - t_start
  summary = {"step": int(final.step), "params": int(n_params),
             "train_loss": losses.get("train"), "val_loss": losses.get("val"),
             "best_val_loss": meta["best_val_loss"], "wall_s": wall_s,
             "tokens": int(final.step) * tokens_per_step,
             "skipped_updates": meta["skipped_updates"],
             "median_ms_per_step": float(np.median(steady)) if steady else None,
             "tokens_per_s": tokens_per_step / np.median(steady) * 1e3 if steady else None}
  print_main(f"llm-jax: done at step {summary['step']}: {summary['tokens']:,} tokens in all "
             f"({(summary['step'] - start) * tokens_per_step:,} in {wall_s:.1f}s of wall time), "
             f"best val loss {summary['best_val_loss']:.4f}" +
             (f", {meta['skipped_updates']} non-finite updates skipped" if skip else ""),
             flush=True)
  if not is_main_process:
    return summary
  if tc.sample_tokens:
    summary["sample"] = task.sample(final.params, tc.sample_tokens, config.seed)
    print(f"--- sample ---\n{summary['sample']}\n---", flush=True)
  write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
