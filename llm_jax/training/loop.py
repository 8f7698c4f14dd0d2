"""train_and_evaluate(config, workdir): the whole training run, resumable from its workdir.

    data -> model + loss -> jitted train/eval steps -> loop: step, log, evaluate, checkpoint -> sample

The batch of step s is drawn from (seed, s) and the dropout key is folded with s, so a run resumed
from a checkpoint continues exactly as the uninterrupted run would (bitwise on CPU).
"""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax.config import validate
from llm_jax.tasks import build_task
from llm_jax.training import checkpoint, parallel, workdir as workdir_lib
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import lr_schedule, make_optimizer
from llm_jax.training.steps import create_state, make_evaluate, make_train_step


class MetricsLog:
  """<workdir>/metrics.jsonl, one JSON object a line. On resume, lines past the restored step go."""

  def __init__(self, workdir, resume_step):
    self.path = os.path.join(workdir, "metrics.jsonl")
    kept = []
    if os.path.exists(self.path):
      with open(self.path, encoding="utf-8") as f:
        kept = [l for l in f if l.strip() and json.loads(l)["step"] <= resume_step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)

  def write(self, record):
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config's model in workdir (resuming what is there). Returns the run's summary."""
  validate(config)
  parallel.init_distributed(config.distributed)
  mode = parallel.resolve(config.parallel)
  parallel.check_batch(config.train.batch_size, mode)
  lead = jax.process_index() == 0  # only process 0 prints and writes files beside checkpoints
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  saved = workdir_lib.read_config(workdir)
  if saved is not None:
    workdir_lib.check_same_run(config, saved)
  tc = config.train
  task = build_task(config, workdir_lib.read_tokenizer(workdir))
  if lead:
    workdir_lib.write_run_files(workdir, config, task.tokenizer)

  loss_fn = make_loss_fn(task.model, task.input_keys)
  tx = make_optimizer(tc)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  example = [jnp.asarray(v[0, :1]) for k, v in task.eval_batches["val"].items()
             if k in task.input_keys]
  state = jax.jit(lambda r: create_state(task.model.init(r, *example)["params"], tx))(init_rng)
  state = jax.device_get(state)  # the host copy: what checkpoints hold, for any device count
  axis = parallel.AXIS if mode == "pmap" else None
  train_step, evaluate_split = parallel.wrap_steps(
      make_train_step(loss_fn, tx, axis), make_evaluate(loss_fn, axis), mode)
  eval_batches = {k: parallel.shard_batch(b, mode, axis=1) for k, b in task.eval_batches.items()}

  manager = checkpoint.make_manager(workdir, tc.keep_checkpoints)
  meta = {"best_val_loss": math.inf}
  if manager.latest_step() is not None:
    state, meta = checkpoint.restore(manager, state)
  start = int(state.step)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  state = parallel.place_state(state, mode)
  log = MetricsLog(workdir, start) if lead else None
  schedule = lr_schedule(tc)
  tokens_per_step = tc.batch_size * tc.grad_accum_steps * task.tokens_per_example
  say = print if lead else (lambda *a, **k: None)
  say(f"llm-jax: {config.model.name} with {n_params / 1e6:.2f}M parameters, {task.describe}, "
      f"{tokens_per_step} tokens/step, " +
      (f"resuming at step {start}" if start else "starting") + f" in {workdir}", flush=True)
  n_dev = parallel.n_devices(mode)
  say(f"llm-jax: {jax.process_count()} process(es), {n_dev} device(s) ({mode}), "
      f"{tc.batch_size // n_dev} examples per device x {tc.grad_accum_steps} accumulation "
      f"steps", flush=True)

  def run_eval(step):
    losses = {name: float(parallel.first(evaluate_split(state, b), mode))
              for name, b in eval_batches.items()}
    meta["best_val_loss"] = min(meta["best_val_loss"], losses["val"])
    if lead:
      extra = task.eval_metrics(parallel.host_state(state, mode).params, losses)
      log.write({"step": step, "train_loss": losses["train"], "val_loss": losses["val"], **extra})
      tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}" +
                 "".join(f", {k} {v:.4f}" for k, v in extra.items()))
    return losses

  losses = run_eval(start) if start == 0 else {}
  pending, ms_per_step = [], []
  t_last, n_since, t_start = time.perf_counter(), 0, time.perf_counter()
  bar = tqdm(total=tc.max_steps, initial=start, disable=None if lead else True,
             dynamic_ncols=True, unit="step")
  for step in range(start, tc.max_steps):
    batch = parallel.shard_batch(task.train_batch(step), mode, axis=1)
    state, metrics = train_step(state, batch, dropout_rng)
    pending.append(metrics)
    n_since += 1
    done = step + 1
    if done % tc.log_interval == 0 or done == tc.max_steps:
      m = {k: float(np.mean([parallel.first(p, mode)[k] for p in jax.device_get(pending)]))
           for k in pending[0]}
      dt = (time.perf_counter() - t_last) / n_since
      ms_per_step.append(dt * 1e3)
      record = {"step": done, **m, "lr": float(schedule(step)), "ms_per_step": dt * 1e3,
                "tokens_per_s": tokens_per_step / dt}
      if lead:
        log.write(record)
      bar.update(n_since)
      bar.set_postfix(loss=f"{m['loss']:.4f}", val=f"{losses.get('val', math.nan):.4f}",
                      tok_s=f"{record['tokens_per_s']:.0f}")
      pending, n_since = [], 0
      t_last = time.perf_counter()
    if done % tc.eval_interval == 0 or done == tc.max_steps:
      losses = run_eval(done)
    if done % tc.checkpoint_every == 0 or done == tc.max_steps:
      checkpoint.save(manager, parallel.host_state(state, mode), meta)
    t_last = time.perf_counter() if n_since == 0 else t_last
  bar.close()
  manager.wait_until_finished()
  manager.close()

  # the first logged interval holds the compilation: leave it out of the speed figures
  steady = ms_per_step[1:] or ms_per_step
  final = parallel.host_state(state, mode)
  summary = {"step": int(final.step), "params": int(n_params),
             "train_loss": losses.get("train"), "val_loss": losses.get("val"),
             "best_val_loss": meta["best_val_loss"], "wall_s": time.perf_counter() - t_start,
             "median_ms_per_step": float(np.median(steady)) if steady else None,
             "tokens_per_s": tokens_per_step / np.median(steady) * 1e3 if steady else None}
  if not lead:
    return summary
  if tc.sample_tokens:
    summary["sample"] = task.sample(final.params, tc.sample_tokens, config.seed)
    print(f"--- sample ---\n{summary['sample']}\n---", flush=True)
  with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
  return summary

