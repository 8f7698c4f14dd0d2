"""One run's record, and its one owner: `Run` keeps a run's files in its workdir (config.json and
tokenizer.json, metrics.jsonl, TensorBoard events, checkpoints, summary.json). Process 0 alone
writes the files beside the checkpoints; every process writes its checkpoints. The training loop
(loop.py) owns one Run; the vectorized runs (vectorized.py) one Run each.
"""

import json
import os

import numpy as np
from tqdm import tqdm

from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write, read_metrics, write_json
from llm_jax.training import checkpoint, finetune, guards, workdir as workdir_lib
from llm_jax.training.events import EventWriter

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

  def __init__(self, config, workdir: str, is_main_process: bool, defaults: dict | None = None,
               label: str = "", fix_dtype=None):
    """defaults: the config's defaults as a dict (the caller's config.default_config()), filling
    the fields a run saved by an older version lacks (workdir.read_config); label: how messages
    name the run beside others ('' alone); fix_dtype: loop.Hooks.fix_dtype, which makes model.dtype
    'auto' the run's concrete dtype once (config.json keeps it, so a resume anywhere keeps it)."""
    self.config, self.is_main, self.defaults, self.label = config, is_main_process, defaults, label
    self.workdir = os.path.abspath(workdir)
    workdir_lib.check_writable(self.workdir)
    saved = workdir_lib.read_config(self.workdir, defaults)
    self.dtype_line = (fix_dtype(config.model, saved.model if saved is not None else None)
                       if fix_dtype else None)
    if not fix_dtype and saved is not None and config.model.dtype == "auto":
      config.model.dtype = saved.model.dtype  # without the hook a resume still keeps the run's
    self.saved = saved  # (an older run's 'auto' there fixed as the run's, by fix_dtype)
    if saved is not None:
      workdir_lib.check_same_run(config, saved)
    self.tokenizer = workdir_lib.read_tokenizer(self.workdir)
    if config.train.init_from:  # fine-tuning: the source's tokenizer (a resumed run saved it)
      self.tokenizer = self.tokenizer or finetune.source_run(config, defaults)[1]
    self.manager = None  # opened once the data and model are built (`checkpoints`)
    self.meta = workdir_lib.checkpoint_meta()
    self.last_saved = None
    self.log = self.events = None

  def checkpoints(self):
    """The checkpoint manager (its threads are started here, after the inputs are checked)."""
    self.manager = checkpoint.make_manager(self.workdir, self.config.train.keep_checkpoints)
    return self.manager

  def open(self, start: int, task) -> None:
    """After the restore (a workdir refused there keeps its files as they were): the run's files,
    from `start` (the restored step) on."""
    self.last_saved = start or None
    if self.is_main:
      workdir_lib.write_run_files(self.workdir, self.config, task.tokenizer)
      workdir_lib.write_data_identity(self.workdir, task.data_identity)
      self.log, self.events = MetricsLog(self.workdir, start), EventWriter(self.workdir, start)

  def finished(self, step: int) -> dict:
    """The run is at (or past) train.max_steps: it is read-only. Nothing trains and no file is
    written; a config that differs from the saved one (in more than a max_steps that does not
    reach past `step`) is refused, since the record must keep the config its checkpoints were
    trained with. Returns the saved summary."""
    self.manager.close()
    saved = self.saved
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

  def close_checkpoints(self, step: int) -> None:
    """The last save complete, the checkpoint manager closed."""
    self.wait(step)
    self.manager.close()

  def check_finite(self, host: list, first_done: int) -> None:
    """nan_policy 'stop': the first non-finite loss or gradient norm among the fetched steps
    `host` (the first of them step `first_done`) ends the run, after the last good checkpoint is
    complete."""
    if self.config.train.nan_policy == "skip" or not host:
      return
    bad = guards.first_nonfinite(host, first_done)
    if bad is None:
      return
    step, name, value = bad
    self.wait(step)
    kept = (f"the last good checkpoint (step {self.last_saved}) is kept"
            if self.last_saved is not None else "no checkpoint was written")
    raise UserError(f"the training {name} is {value} at step {step}" +
                    (f" in {self.workdir}" if self.label else "") + f": {kept}; lower "
                    f"config.train.learning_rate, or set config.train.nan_policy='skip' to skip "
                    f"such updates")

  def log_train(self, step: int, host: list, param_norm, lr: float, dt: float,
                tokens_per_step: int) -> dict:
    """Writes (process 0) and returns the train record of the fetched steps' metrics `host`."""
    m = {name: guards.finite_mean([h[name] for h in host]) for name in host[0]
         if name != "skipped"}
    if self.config.train.nan_policy == "skip":
      self.meta["skipped_updates"] += int(sum(h["skipped"] for h in host))
      m["skipped_updates"] = self.meta["skipped_updates"]
    m["param_norm"] = float(param_norm)
    record = {"step": step, **m, "lr": lr, "ms_per_step": dt * 1e3,
              "tokens_per_s": tokens_per_step / dt}
    if self.is_main:
      self.log.write(record)
      self.events.train(record)
    return record

  def log_eval(self, step: int, losses: dict, extra: dict, sample: str | None) -> None:
    """An evaluation: the best val loss, and (process 0) the record, events and a line."""
    self.meta["best_val_loss"] = min(self.meta["best_val_loss"], losses["val"])
    if not self.is_main:
      return
    self.log.write({"step": step, "train_loss": losses["train"], "val_loss": losses["val"],
                    **extra})
    self.events.evaluation(step, losses, extra, sample)
    tqdm.write(f"step {step}: " + (f"{self.label}: " if self.label else "") +
               f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f}" +
               "".join(f", {name} {v:.4f}" for name, v in extra.items()))

  def finish(self, step: int, losses: dict, n_params: int, tokens_per_step: int,
             trained_steps: int, wall_s: float, steady_ms: list, sample=None, **more) -> dict:
    """The run's summary: printed, and written to summary.json by process 0. `sample`: a
    function returning the end-of-run sample (process 0 alone draws it)."""
    median = float(np.median(steady_ms)) if steady_ms else None
    meta, skip = self.meta, self.config.train.nan_policy == "skip"
    summary = {"step": step, "params": int(n_params),
               "train_loss": losses["train"] if losses else None,
               "val_loss": losses["val"] if losses else None,
               "best_val_loss": meta["best_val_loss"], "wall_s": wall_s,
               "tokens": step * tokens_per_step, "skipped_updates": meta["skipped_updates"],
               "median_ms_per_step": median,
               "tokens_per_s": tokens_per_step / median * 1e3 if median else None, **more}
    if self.is_main:
      print(f"llm-jax: done at step {step}: {summary['tokens']:,} tokens in all "
            f"({trained_steps * tokens_per_step:,} in {wall_s:.1f}s of wall time), best val loss "
            f"{meta['best_val_loss']:.4f}" +
            (f", {meta['skipped_updates']} non-finite updates skipped" if skip else "") +
            (f" ({self.workdir})" if self.label else ""), flush=True)
      if sample is not None and self.config.train.sample_tokens:
        summary["sample"] = sample()
        print(f"--- sample ---\n{summary['sample']}\n---", flush=True)
      write_json(os.path.join(self.workdir, workdir_lib.SUMMARY_FILE), summary)
    return summary

  def close(self) -> None:
    if self.events:
      self.events.close()


