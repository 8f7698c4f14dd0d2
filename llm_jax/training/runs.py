"""The runs a training loop trains, and everything each writes: the loop's one view of the K axis.

`Runs` holds K runs trained together (K = 1: a plain run; K > 1: `llm-jax sweep --vectorize`,
their states stacked on a leading axis, vectorized.py). The loop hands it whole-K values (the
stacked metrics, losses, parameters) and it splits them per run (`at`): each `Run` keeps its own
workdir, metrics.jsonl, TensorBoard events, checkpoints and summary.json, exactly as a single run.
Process 0 alone writes the files beside the checkpoints; every process writes its checkpoints.
"""

import json
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from llm_jax import harness, peaks
from llm_jax.config import validate
from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write, read_metrics, write_json
from llm_jax.training import (checkpoint, finetune, guards, parallel, vectorized,
                              workdir as workdir_lib)
from llm_jax.training.events import EventWriter
from llm_jax.training.optimizer import lr_schedule
from llm_jax.training.tasks import build_task

# tokens of the text sample written to TensorBoard at each evaluation (at most train.sample_tokens)
EVAL_SAMPLE_TOKENS = 100


class MetricsLog:
  """<workdir>/metrics.jsonl, one JSON object a line. On resume, records past the restored step
  go (and a last line torn by a killed run), in one atomic rewrite."""

  def __init__(self, workdir, resume_step):
    self.path = os.path.join(workdir, workdir_lib.METRICS_FILE)
    kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
    with atomic_write(self.path) as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def write(self, record):
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")


def _raise_if_os_error(e, manager, step, last_saved):
  """An OSError (disk full, ...) behind a save is a UserError naming the intact checkpoint (Orbax
  commits a step only once it is completely written)."""
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
    # model.dtype 'auto' becomes the run's concrete dtype here, once: config.json keeps it
    self.dtype_line = peaks.fix_run_dtype(config.model, saved.model if saved else None)
    if saved is not None:
      workdir_lib.check_same_run(config, saved)
    self.tokenizer = workdir_lib.read_tokenizer(self.workdir)
    if config.train.init_from:  # fine-tuning: the source's tokenizer (a resumed run saved it)
      self.tokenizer = self.tokenizer or finetune.source_run(config)[1]
    self.manager = None  # opened once the data and model are built (`checkpoints`)
    self.meta = workdir_lib.checkpoint_meta()
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

  def finished(self, step: int) -> dict:
    """The run is at (or past) train.max_steps: it is read-only. Nothing trains and no file is
    written; a config that differs from the saved one (in more than a max_steps that does not
    reach past `step`) is refused, since the record must keep the config its checkpoints were
    trained with. Returns the saved summary."""
    self.manager.close()
    saved = workdir_lib.read_config(self.workdir)
    changed = [f for f in workdir_lib.changed_fields(self.config, saved) if f != "train.max_steps"
               ] if saved is not None else []
    if changed:
      f = changed[0]
      section, key = f.split(".", 1) if "." in f else (None, f)
      new = self.config[section][key] if section else self.config[key]
      old = saved[section].get(key) if section else saved.get(key)
      raise UserError(f"{self.workdir} is a finished run (step {step}), and config.{f}={new!r} "
                      f"differs from its {old!r}: re-running it trains nothing and changes "
                      f"nothing; raise --config.train.max_steps to continue it (with its own "
                      f"config), or use a fresh --workdir")
    summary = workdir_lib.read_summary(self.workdir) or {
        "step": step, "best_val_loss": self.meta["best_val_loss"]}
    if self.is_main:
      print(f"llm-jax: {self.workdir} is done: step {step} of train.max_steps="
            f"{self.config.train.max_steps}, best val loss {self.meta['best_val_loss']:.4f}; "
            f"nothing to train, nothing changed (raise --config.train.max_steps to continue it)",
            flush=True)
    return summary

  def save(self, state) -> None:
    """Starts an asynchronous save of `state` (numpy or this process's shards)."""
    try:
      checkpoint.save(self.manager, state, self.meta)
    except Exception as e:  # noqa: BLE001 -- Orbax may wrap the OSError of its writer thread
      _raise_if_os_error(e, self.manager, int(np.asarray(state.step)), self.last_saved)
      raise
    self.last_saved = int(np.asarray(state.step))

  def wait(self, step: int) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      _raise_if_os_error(e, self.manager, step, self.last_saved)
      raise

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


class Runs:
  """K runs trained together (K = 1: a plain run), with their tasks. `at(tree, k)` is run k's part
  of a whole-K tree (for K = 1, the tree itself); `stack` joins K trees on a leading axis."""

  def __init__(self, configs, workdirs):
    if len(configs) != len(workdirs) or not configs:
      raise ValueError("one workdir per config")
    for c in configs:
      validate(c)
    # the runs' own copies: each Run fixes its model.dtype 'auto' in its copy, not the caller's
    configs = [c.copy_and_resolve_references() for c in configs]
    self.configs, self.config, self.K = configs, configs[0], len(configs)
    self.several = self.K > 1
    if self.several:
      vectorized.check_vectorizable(configs)
    parallel.init_distributed(self.config.distributed)
    self.is_main = jax.process_index() == 0  # only it prints and writes files beside checkpoints
    self.runs = [Run(c, w, self.is_main) for c, w in zip(configs, workdirs)]
    if self.several:  # again with each run's dtype fixed (Run: 'auto' -> the dtype it took)
      vectorized.check_vectorizable(configs)
    self.tasks = [build_task(c, r.tokenizer) for c, r in zip(configs, self.runs)]
    self.task = self.tasks[0]
    for r, t in zip(self.runs, self.tasks):  # a prepared dataset's run resumes on that dataset only
      workdir_lib.check_same_data(r.workdir, t.data_identity)
    tc = self.config.train
    self.tokens_per_step = tc.batch_size * tc.grad_accum_steps * self.task.tokens_per_example
    self.skip = tc.nan_policy == "skip"
    self.schedules = [lr_schedule(c.train) for c in configs]
    self.where = self.runs[0].workdir if not self.several else f"{self.K} vectorized runs"

  def at(self, tree, k: int):
    return jax.tree.map(lambda x: x[k], tree) if self.several else tree

  def stack(self, trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees) if self.several else trees[0]

  def train_batch(self, step: int) -> dict:
    return self.stack([t.train_batch(step) for t in self.tasks])

  def eval_batches(self) -> dict:
    return {name: self.stack([t.eval_batches[name] for t in self.tasks])
            for name in self.task.eval_batches}

  def print(self, *args, **kwargs) -> None:
    if self.is_main:
      print(*args, **kwargs)

  def open(self, start: int) -> None:
    """Each run's files, from `start` (the restored step) on."""
    for r, t in zip(self.runs, self.tasks):
      r.open(start, t.tokenizer)
      if self.is_main:
        workdir_lib.write_data_identity(r.workdir, t.data_identity)

  def finished(self, step: int) -> list[dict]:
    """Every run is at train.max_steps: read-only (Run.finished); their saved summaries."""
    return [r.finished(step) for r in self.runs]

  def log_train(self, step: int, host: list, norms, dt: float) -> dict:
    """Writes each run's train record of the fetched steps' metrics `host`; returns the last
    run's (the progress bar shows it)."""
    for k, r in enumerate(self.runs):
      run_host = [self.at(h, k) for h in host]
      m = {name: guards.finite_mean([h[name] for h in run_host]) for name in run_host[0]
           if name != "skipped"}
      if self.skip:
        r.meta["skipped_updates"] += int(sum(h["skipped"] for h in run_host))
        m["skipped_updates"] = r.meta["skipped_updates"]
      m["param_norm"] = float(self.at(norms, k))
      record = {"step": step, **m, "lr": float(self.schedules[k](step - 1)),
                "ms_per_step": dt * 1e3, "tokens_per_s": self.tokens_per_step / dt}
      if self.is_main:
        r.log.write(record)
        r.events.train(record)
    return record

  def log_eval(self, step: int, losses: dict, params) -> None:
    """Each run's evaluation: its best val loss, and (process 0) its record, events, line."""
    tc = self.config.train
    for k, (r, t) in enumerate(zip(self.runs, self.tasks)):
      run_losses = {name: float(self.at(v, k)) for name, v in losses.items()}
      r.meta["best_val_loss"] = min(r.meta["best_val_loss"], run_losses["val"])
      if not self.is_main:
        continue
      run_params = self.at(params, k)
      extra = t.eval_metrics(run_params, run_losses)
      extra.update(harness.training_metrics(self.configs[k], t, run_params, step))  # lm-eval's
      r.log.write({"step": step, "train_loss": run_losses["train"],
                   "val_loss": run_losses["val"], **extra})
      n = min(tc.sample_tokens, EVAL_SAMPLE_TOKENS)
      r.events.evaluation(step, run_losses, extra,
                          t.sample(run_params, n, self.configs[k].seed) if n else None)
      tqdm.write(f"step {step}: " + (f"run {k}: " if self.several else "") +
                 f"train loss {run_losses['train']:.4f}, val loss {run_losses['val']:.4f}" +
                 "".join(f", {name} {v:.4f}" for name, v in extra.items()))

  def check_finite(self, host: list, first_done: int) -> None:
    """nan_policy 'stop': a non-finite loss or gradient norm in `host` ends the run (Run's)."""
    if self.skip or not host:
      return
    for k, r in enumerate(self.runs):
      r.check_finite([self.at(h, k) for h in host], first_done, self.several)

  def save(self, state_host) -> None:
    for k, r in enumerate(self.runs):
      r.save(self.at(state_host, k))

  def wait(self, step: int) -> None:
    for r in self.runs:
      r.wait(step)

  def close(self) -> None:
    for r in self.runs:
      r.close()

  def finish(self, final, losses: dict, n_params: int, start: int, wall_s: float,
             steady_ms: list) -> list[dict]:
    """Each run's summary (printed, and written to summary.json by process 0)."""
    tc = self.config.train
    summaries = []
    for k, (r, t) in enumerate(zip(self.runs, self.tasks)):
      summary = self.summary(k, self.at(final, k).step, losses, n_params, wall_s, steady_ms)
      self.print(f"llm-jax: done at step {summary['step']}: {summary['tokens']:,} tokens in all "
                 f"({(summary['step'] - start) * self.tokens_per_step:,} in {wall_s:.1f}s of "
                 f"wall time), best val loss {summary['best_val_loss']:.4f}" +
                 (f", {r.meta['skipped_updates']} non-finite updates skipped" if self.skip
                  else "") + (f" ({r.workdir})" if self.several else ""), flush=True)
      if self.is_main:
        if tc.sample_tokens:
          summary["sample"] = t.sample(self.at(final, k).params, tc.sample_tokens,
                                       self.configs[k].seed)
          print(f"--- sample ---\n{summary['sample']}\n---", flush=True)
        write_json(os.path.join(r.workdir, workdir_lib.SUMMARY_FILE), summary)
      summaries.append(summary)
    return summaries

  def summary(self, k, step, losses, n_params, wall_s, steady_ms) -> dict:
    """Run k's summary.json: where it stopped, its losses, its speed."""
    meta, step = self.runs[k].meta, int(step)
    median = float(np.median(steady_ms)) if steady_ms else None
    loss = lambda split: float(self.at(losses[split], k)) if losses else None
    summary = {"step": step, "params": int(n_params), "train_loss": loss("train"),
               "val_loss": loss("val"), "best_val_loss": meta["best_val_loss"], "wall_s": wall_s,
               "tokens": step * self.tokens_per_step, "skipped_updates": meta["skipped_updates"],
               "median_ms_per_step": median,
               "tokens_per_s": self.tokens_per_step / median * 1e3 if median else None}
    if self.several:
      summary["vectorized"] = self.K
    return summary

  def restore(self, state, place):
    """Each run's newest checkpoint that restores (damaged ones skipped, checkpoint.py). A single
    run restores straight into the placement's shardings. Vectorized runs restore on the host and
    resume together at the oldest of their steps: a run whose newest is later drops the later
    checkpoints, which it writes again."""
    runs = self.runs
    if not self.several:
      restored, meta = checkpoint.restore_latest_good(runs[0].manager, place.saveable(state),
                                                      move_bad=self.is_main)
      runs[0].meta.update(meta)
      return place.place(restored)
    like = jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype), state)
    if not all(r.manager.all_steps() for r in runs):
      missing = next(r.workdir for r in runs if not r.manager.all_steps())
      raise UserError(f"vectorized runs resume together, and {missing} has no checkpoint while "
                      f"the others have: run it alone, or remove the others' checkpoints")
    restored = [checkpoint.restore_latest_good(r.manager, like, move_bad=self.is_main)
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
    return place.place(self.stack(states))


def duration(seconds: float) -> str:
  """'4m05s', '2h07m'."""
  m, s = divmod(int(seconds), 60)
  return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Progress:
  """The step timing (ms per step of each logged interval, the time of evaluations and saves left
  out), the progress bar, and the plain progress line every train.log_seconds where the bar draws
  nothing (a SLURM log, CI, a sweep's train.log)."""

  def __init__(self, tc, start: int, is_main_process: bool, K: int):
    self.tc, self.start, self.K = tc, start, K
    self.bar = tqdm(total=tc.max_steps, initial=start,
                    disable=None if is_main_process else True, dynamic_ncols=True, unit="step")
    self.plain = is_main_process and (self.bar.disable or not sys.stdout.isatty())
    self.t_start = self.t_last = self.t_line = time.perf_counter()
    self.n_since, self.ms_per_step = 0, []

  def step_done(self) -> None:
    self.n_since += 1

  def interval(self) -> float:
    """Seconds per step since the last logged interval."""
    dt = (time.perf_counter() - self.t_last) / self.n_since
    self.ms_per_step.append(dt * 1e3)
    return dt

  def show(self, steps_done: int, record: dict, val_loss: float) -> None:
    self.bar.update(self.n_since)
    tok_s = self.K * record["tokens_per_s"]
    self.bar.set_postfix(loss=f"{record['loss']:.4f}", val=f"{val_loss:.4f}", tok_s=f"{tok_s:.0f}")
    now = time.perf_counter()
    if self.plain and now - self.t_line >= self.tc.log_seconds:
      # our own ETA: where this line is printed the bar is disabled, and a disabled tqdm counts
      # nothing (no n, no rate); its '00:05<00:10' format is not this line's either
      eta = (now - self.t_start) / (steps_done - self.start) * (self.tc.max_steps - steps_done)
      print(f"step {steps_done}/{self.tc.max_steps}: loss {record['loss']:.4f}, {tok_s:,.0f} "
            f"tokens/s, {duration(now - self.t_start)} elapsed, ETA {duration(eta)}", flush=True)
      self.t_line = now
    self.n_since, self.t_last = 0, time.perf_counter()

  def resume_clock(self) -> None:
    """After an evaluation or a save: the next interval's clock starts now."""
    if self.n_since == 0:
      self.t_last = time.perf_counter()

  def steady_ms(self) -> list:
    """The first logged interval holds the compilation: left out of the speed figures."""
    return self.ms_per_step[1:] or self.ms_per_step

  def close(self) -> None:
    self.bar.close()
