"""K runs in one compiled program: jax.vmap over the train state, the batch stream and the knobs.

Runs that share every shape (same model, data, batch, schedule lengths) and differ only in
VMAPPABLE fields (seed, learning rates, weight decay, dropout rate) train together: the state is
stacked along a leading axis K, step s feeds each run its own batch (from its own seed), and the
optimizer and the dropout rate are built inside the vmapped step from that run's traced values.
Each run keeps its own workdir (config.json, metrics.jsonl, checkpoints, summary.json) exactly as
`train_and_evaluate` writes it, so its per-step losses equal a separate run's (to float rounding)
and a sweep's report reads both alike.

On one device only (jit); `config.parallel` is not used here.
"""

import dataclasses
import json
import math
import os
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from llm_jax.config import validate
from llm_jax.errors import UserError
from llm_jax.tasks import build_task
from llm_jax.training import checkpoint, signals, workdir as workdir_lib
from llm_jax.training.loop import MetricsLog
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import lr_schedule, make_optimizer
from llm_jax.training.steps import init_state, make_evaluate, make_train_step

# the fields that may differ between the K runs: none of them changes a shape
VMAPPABLE = ("seed", "train.learning_rate", "train.min_lr", "train.weight_decay", "model.dropout")
# of those, the config.train fields fed to the traced step's optimizer (the seed acts through the
# keys and batches; the dropout rate through the model)
OPTIMIZER_KNOBS = ("learning_rate", "min_lr", "weight_decay")


def _flat(config) -> dict:
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
    else:
      out[key] = value
  return out


def shared_key(config) -> str:
  """What must be equal for runs to train together: the config without its VMAPPABLE fields."""
  return repr(sorted((k, v) for k, v in _flat(config).items() if k not in VMAPPABLE))


def check_vectorizable(configs) -> None:
  first = _flat(configs[0])
  if first["train.init_from"]:
    raise UserError("config.train.init_from is set: vectorized runs start from a fresh init; "
                    "run fine-tunings without --vectorize")
  for c in configs[1:]:
    for field, value in _flat(c).items():
      if field not in VMAPPABLE and value != first[field]:
        raise UserError(f"config.{field} differs between vectorized runs ({first[field]!r} vs "
                        f"{value!r}): only {', '.join(VMAPPABLE)} may differ; run the others "
                        "separately")


def _knobs(configs) -> dict:
  """{knob: (K,) float32} the traced per-run values."""
  values = {"learning_rate": [c.train.learning_rate for c in configs],
            "min_lr": [c.train.min_lr for c in configs],
            "weight_decay": [c.train.weight_decay for c in configs],
            "dropout": [c.model.dropout for c in configs]}
  return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}


def train_vectorized(configs, workdirs) -> list[dict]:
  """Trains configs[k] in workdirs[k], all K in one vmapped program. Returns the K summaries."""
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("one workdir per config")
  for c in configs:
    validate(c)
  check_vectorizable(configs)
  K, tc = len(configs), configs[0].train
  workdirs = [os.path.abspath(w) for w in workdirs]
  for c, w in zip(configs, workdirs):
    os.makedirs(w, exist_ok=True)
    saved = workdir_lib.read_config(w)
    if saved is not None:
      workdir_lib.check_same_run(c, saved)
  tasks = [build_task(c, workdir_lib.read_tokenizer(w)) for c, w in zip(configs, workdirs)]
  for c, w, t in zip(configs, workdirs, tasks):
    workdir_lib.write_run_files(w, c, t.tokenizer)

  task, input_keys = tasks[0], tasks[0].input_keys

  def model_and_tx(knobs):  # this run's model and optimizer, from its traced knobs
    model = task.model.clone(cfg=dataclasses.replace(task.model.cfg, dropout=knobs["dropout"]))
    train_cfg = types.SimpleNamespace(**{**tc.to_dict(),
                                         **{k: knobs[k] for k in OPTIMIZER_KNOBS}})
    return model, make_optimizer(train_cfg)

  def init(rng, knobs):
    model, tx = model_and_tx(knobs)
    return init_state(model, configs[0].model, tx, rng)

  def train_step(state, batch, rng, knobs):
    model, tx = model_and_tx(knobs)
    return make_train_step(make_loss_fn(model, input_keys), tx)(state, batch, rng)

  def evaluate(state, batches, knobs):
    return make_evaluate(make_loss_fn(model_and_tx(knobs)[0], input_keys))(state, batches)

  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  knobs = _knobs(configs)
  keys = [jax.random.split(jax.random.key(c.seed)) for c in configs]  # (init, dropout) per run
  init_rngs, dropout_rngs = jnp.stack([k[0] for k in keys]), jnp.stack([k[1] for k in keys])
  state = jax.device_get(jax.jit(jax.vmap(init))(init_rngs, knobs))  # (K, ...) host copy
  train_step = jax.jit(jax.vmap(train_step), donate_argnums=0)
  evaluate = jax.jit(jax.vmap(evaluate))
  eval_batches = {name: stack([t.eval_batches[name] for t in tasks]) for name in task.eval_batches}

  managers = [checkpoint.make_manager(w, tc.keep_checkpoints) for w in workdirs]
  metas = [{"best_val_loss": math.inf} for _ in range(K)]
  start = _resume_step(managers)
  if start:
    one = jax.tree.map(lambda x: x[0], state)
    restored = [checkpoint.restore(m, one, start) for m in managers]
    state, metas = stack([r[0] for r in restored]), [dict(r[1]) for r in restored]
  n_params = sum(x[0].size for x in jax.tree.leaves(state.params))
  logs = [MetricsLog(w, start) for w in workdirs]
  schedules = [lr_schedule(c.train) for c in configs]
  tokens_per_step = tc.batch_size * tc.grad_accum_steps * task.tokens_per_example
  print(f"llm-jax: {K} vectorized runs of {configs[0].model.name} with {n_params / 1e6:.2f}M "
        f"parameters each, {tokens_per_step} tokens/step each, " +
        (f"resuming at step {start}" if start else "starting"), flush=True)

  def run_eval(step):
    losses = {name: np.asarray(evaluate(state, b, knobs)) for name, b in eval_batches.items()}
    host = jax.device_get(state)
    for k in range(K):
      per_run = {name: float(v[k]) for name, v in losses.items()}
      metas[k]["best_val_loss"] = min(metas[k]["best_val_loss"], per_run["val"])
      params_k = jax.tree.map(lambda x: x[k], host.params)
      extra = tasks[k].eval_metrics(params_k, per_run)
      logs[k].write({"step": step, "train_loss": per_run["train"], "val_loss": per_run["val"],
                     **extra})
    tqdm.write(f"step {step}: val loss " + " ".join(f"{v:.4f}" for v in losses["val"]))
    return losses

  losses = run_eval(start) if start == 0 else {}
  pending, ms_per_step = [], []
  t_last, n_since, t_start = time.perf_counter(), 0, time.perf_counter()
  bar = tqdm(total=tc.max_steps, initial=start, dynamic_ncols=True, unit="step")
  with signals.StopRequest("llm-jax sweep worker") as stop:
    for step in range(start, tc.max_steps):
      batch = stack([t.train_batch(step) for t in tasks])
      state, metrics = train_step(state, batch, dropout_rngs, knobs)
      pending.append(metrics)
      n_since += 1
      done = step + 1
      if done % tc.log_interval == 0 or done == tc.max_steps:
        fetched = jax.device_get(pending)
        dt = (time.perf_counter() - t_last) / n_since
        ms_per_step.append(dt * 1e3)
        for k in range(K):
          m = {name: float(np.mean([p[name][k] for p in fetched])) for name in fetched[0]}
          logs[k].write({"step": done, **m, "lr": float(schedules[k](step)),
                         "ms_per_step": dt * 1e3, "tokens_per_s": tokens_per_step / dt})
        bar.update(n_since)
        bar.set_postfix(tok_s=f"{K * tokens_per_step / dt:.0f}")
        pending, n_since = [], 0
        t_last = time.perf_counter()
      if done % tc.eval_interval == 0 or done == tc.max_steps:
        losses = run_eval(done)
      if done % tc.checkpoint_every == 0 or done == tc.max_steps or stop.signum:
        host = jax.device_get(state)
        for k in range(K):
          checkpoint.save(managers[k], jax.tree.map(lambda x: x[k], host), metas[k])
      if stop.signum:  # SIGINT/SIGTERM (a sweep stopped): every run saved this step
        for m in managers:
          m.wait_until_finished()
        raise signals.Interrupted(stop.signum, done, ", ".join(workdirs))
      t_last = time.perf_counter() if n_since == 0 else t_last
  bar.close()
  for m in managers:
    m.wait_until_finished()
    m.close()

  steady = ms_per_step[1:] or ms_per_step  # the first interval holds the compilation
  wall_s = time.perf_counter() - t_start
  host = jax.device_get(state)
  summaries = []
  for k, (c, w) in enumerate(zip(configs, workdirs)):
    summary = {"step": int(host.step[k]), "params": int(n_params),
               "train_loss": float(losses["train"][k]) if losses else None,
               "val_loss": float(losses["val"][k]) if losses else None,
               "best_val_loss": metas[k]["best_val_loss"], "wall_s": wall_s,
               "median_ms_per_step": float(np.median(steady)) if steady else None,
               "tokens_per_s": tokens_per_step / np.median(steady) * 1e3 if steady else None,
               "vectorized": K}
    if tc.sample_tokens:
      params_k = jax.tree.map(lambda x: x[k], host.params)
      summary["sample"] = tasks[k].sample(params_k, tc.sample_tokens, c.seed)
    with open(os.path.join(w, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    summaries.append(summary)
  return summaries


def _resume_step(managers) -> int:
  """The newest step every run has a checkpoint of (0: start afresh)."""
  common = set.intersection(*(set(m.all_steps()) for m in managers))
  return max(common, default=0)
