"""K runs in one compiled program (`llm-jax sweep --vectorize`): the training loop of loop.py with
the train state, the batch stream and the knobs stacked on a leading axis K, and the step vmapped.

Runs that share every shape (same model, data, batch, schedule lengths) and differ only in
VMAPPABLE fields (seed, learning rates, weight decay, dropout rate) train together: step s feeds
each run its own batch (from its own seed), and the optimizer and the dropout rate are built inside
the vmapped step from that run's traced values. `train_runs` reuses the single run's parts (the
step functions of steps.py, the placement, loop.py's evaluation and start-of-run lines) and gives
each run its own record (record.Run: workdir, config.json, metrics.jsonl, events, checkpoints,
summary.json), the NaN policy, damaged-checkpoint fallback and disk checks of a single run; its
per-step losses equal a separate run's (to float rounding). The progress bar shows the mean over
the runs.
"""

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from llm_jax.errors import UserError
from llm_jax.training import checkpoint, loop, parallel, signals, workdir as workdir_lib
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import lr_schedule, make_optimizer
from llm_jax.training.progress import Progress
from llm_jax.training.record import Run
from llm_jax.training.steps import Functions, init_state, make_evaluate, make_train_step
from llm_jax.training.tasks import build_task

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
  if first["model.moe_experts"] and first["model.moe_dispatch"] == "ragged":
    # JAX 0.10.2 has no batching rule for the transposed ragged_dot of the experts' gradients
    raise UserError("config.model.moe_dispatch='ragged' cannot be vectorized (jax.vmap of "
                    "ragged_dot's gradient is not implemented): use --config.model.moe_dispatch="
                    "blocks, or run without --vectorize")
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


def _with_knobs(train_config, knobs):
  """A copy of config.train whose OPTIMIZER_KNOBS are a run's traced values (a ConfigDict without
  type checks: a tracer is no float), for make_optimizer."""
  out = ml_collections.ConfigDict(train_config.to_dict(), type_safe=False)
  for k in OPTIMIZER_KNOBS:
    out[k] = knobs[k]
  return out


def functions(configs, tasks, skip_nonfinite: bool) -> Functions:
  """The K runs' functions, vmapped; each builds its run's model and optimizer from its traced
  knobs (the K values closed over as constants)."""
  task, input_keys, tc = tasks[0], tasks[0].input_keys, configs[0].train
  knobs = _knobs(configs)

  def model_and_tx(knobs):  # this run's model and optimizer, from its traced knobs
    model = task.model.clone(cfg=dataclasses.replace(task.model.cfg, dropout=knobs["dropout"]))
    return model, make_optimizer(_with_knobs(tc, knobs))

  def init(rng, knobs):
    model, tx = model_and_tx(knobs)
    return init_state(model, configs[0].model, tx, rng)

  def train_step(state, batch, rng, knobs):
    model, tx = model_and_tx(knobs)
    return make_train_step(make_loss_fn(model, input_keys), tx,
                           skip_nonfinite=skip_nonfinite)(state, batch, rng)

  def evaluate(state, batches, knobs):
    return make_evaluate(make_loss_fn(model_and_tx(knobs)[0], input_keys))(state, batches)

  return Functions(init=lambda rngs: jax.vmap(init)(rngs, knobs),
                   train_step=lambda s, b, r: jax.vmap(train_step)(s, b, r, knobs),
                   evaluate=lambda s, b: jax.vmap(evaluate)(s, b, knobs),
                   param_norm=jax.vmap(optax.tree.norm))


def _at(tree, k: int):
  """Run k's part of a tree stacked over the runs."""
  return jax.tree.map(lambda x: x[k], tree)


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def train_runs(configs, workdirs, hooks: loop.Hooks = loop.Hooks()) -> list[dict]:
  """Trains configs[k] in workdirs[k], together (resuming what is there); one config is a single
  run (loop.train_and_evaluate). Returns the summaries."""
  if len(configs) != len(workdirs) or not configs:
    raise ValueError("one workdir per config")
  if len(configs) == 1:
    return [loop.train_and_evaluate(configs[0], workdirs[0], hooks)]
  # the runs' own copies: each Run fixes its model.dtype 'auto' in its copy, not the caller's
  configs = [c.copy_and_resolve_references() for c in configs]
  K, config, tc = len(configs), configs[0], configs[0].train
  check_vectorizable(configs)
  loop.check_hooks(config, hooks)
  parallel.init_distributed(config.distributed)
  is_main = jax.process_index() == 0
  runs, tasks = _runs_and_tasks(configs, workdirs, is_main, hooks)
  place, (state, train_step, evaluate, param_norm) = _program(configs, tasks)
  for r in runs:  # (then a list: every manager opens)
    workdir_lib.check_free_space(r.workdir, loop.state_bytes(state) // K)
  if any([r.checkpoints().all_steps() for r in runs]):
    state = place.place(_stack(_restore(runs, state, is_main)))
  start = loop.first_step(place, state)
  if start >= tc.max_steps:  # every run is finished: read-only
    return [r.finished(start) for r in runs]
  for r, t in zip(runs, tasks):
    r.open(start, t)
  n_params = loop.announce(config, tasks[0], place,
                           jax.eval_shape(lambda p: _at(p, 0), state.params), start,
                           f"{K} vectorized runs", is_main, f" each, {K} runs vmapped",
                           dtype_line=runs[0].dtype_line)
  eval_batches = {name: place.put_batch(_stack([t.eval_batches[name] for t in tasks]))
                  for name in tasks[0].eval_batches}

  def evaluate_now(state, step):  # every process; each run's losses {split: (K,)}
    losses = {name: place.local(evaluate(state, b)) for name, b in eval_batches.items()}
    params = place.to_host(state.params)
    for k, (r, t) in enumerate(zip(runs, tasks)):
      loop.log_evaluation(r, t, hooks, step, {n: float(v[k]) for n, v in losses.items()},
                          _at(params, k))
    return losses

  losses = evaluate_now(state, start) if start == 0 else {}
  progress = Progress(tc, start, is_main)
  tokens_per_step = loop.tokens_per_step(config, tasks[0])
  schedules = [lr_schedule(c.train) for c in configs]
  one_process, pending = jax.process_count() == 1, []
  try:
    with signals.StopRequest("llm-jax sweep worker") as stop:
      for step in range(start, tc.max_steps):
        batch = _stack([t.train_batch(step) for t in tasks])
        state, metrics = train_step(state, place.put_batch(batch))
        pending.append(metrics)
        progress.step_done()
        steps_done, last = step + 1, step + 1 == tc.max_steps
        stopping = stop.signum if one_process else None
        if steps_done % tc.log_interval == 0 or last:
          if not one_process:
            stopping = parallel.first_stop_signal(stop.signum)
          host = _check_finite(runs, place, pending, steps_done - progress.n_since + 1)
          dt, norms = progress.interval(), place.local(param_norm(state.params))
          loss = np.mean([r.log_train(steps_done, [_at(h, k) for h in host], norms[k],
                                      float(schedules[k](steps_done - 1)), dt,
                                      tokens_per_step)["loss"] for k, r in enumerate(runs)])
          progress.show(steps_done, float(loss), float(np.mean(losses.get("val", np.nan))),
                        K * tokens_per_step / dt, runs=f"mean of {K}")
          pending = []
        if steps_done % tc.eval_interval == 0 or last:
          losses = evaluate_now(state, steps_done)
        if steps_done % tc.checkpoint_every == 0 or last or stopping:  # never a state past a NaN
          _check_finite(runs, place, pending, steps_done - progress.n_since + 1)
          state_host = place.to_host(state)
          for k, r in enumerate(runs):
            r.save(_at(state_host, k))
        if stopping:
          for r in runs:
            r.wait(steps_done)
          raise signals.Interrupted(stopping, steps_done, ", ".join(r.workdir for r in runs))
        progress.resume_clock()
  finally:
    progress.close()
    for r in runs:
      r.close()
  for r in runs:
    r.close_checkpoints(tc.max_steps)
  final = place.to_host(state)  # every process: a collective under a mesh
  return [_finish(r, t, k, final, losses, n_params, tokens_per_step, tc.max_steps - start,
                  time.perf_counter() - progress.t_start, progress.steady_ms(), K)
          for k, (r, t) in enumerate(zip(runs, tasks))]


def _finish(run, task, k, final, losses, n_params, tokens_per_step, trained_steps, wall_s,
            steady_ms, K) -> dict:
  """Run k's summary (record.Run.finish), from the final state and losses of the K runs."""
  params, seed, n = _at(final, k).params, run.config.seed, run.config.train.sample_tokens
  return run.finish(int(final.step[k]), {name: float(v[k]) for name, v in losses.items()},
                    n_params, tokens_per_step, trained_steps, wall_s, steady_ms,
                    sample=lambda: task.sample(params, n, seed), vectorized=K)


def _program(configs, tasks):
  """(the placement, loop.program's: the K runs' state, placed, and their placed functions)."""
  tc = configs[0].train
  place = parallel.placement(configs[0], tasks[0].model, make_optimizer(tc), lead=1)
  keys = [jax.random.split(jax.random.key(c.seed)) for c in configs]  # (init, dropout) per run
  return place, loop.program(place, functions(configs, tasks, tc.nan_policy == "skip"),
                             jnp.stack([k[0] for k in keys]), jnp.stack([k[1] for k in keys]))


def _runs_and_tasks(configs, workdirs, is_main: bool, hooks: loop.Hooks):
  runs = [Run(c, w, is_main, hooks.defaults, label=f"run {k}", fix_dtype=hooks.fix_dtype)
          for k, (c, w) in enumerate(zip(configs, workdirs))]
  check_vectorizable(configs)  # again, each run's dtype fixed ('auto' -> the dtype it took)
  tasks = [build_task(c, r.tokenizer) for c, r in zip(configs, runs)]
  for r, t in zip(runs, tasks):  # a prepared dataset's run resumes on that dataset only
    workdir_lib.check_same_data(r.workdir, t.data_identity)
  return runs, tasks


def _check_finite(runs, place, pending: list, first_done: int) -> list:
  """The fetched steps' metrics (K-stacked); each run's nan_policy 'stop' (record.Run's)."""
  host = [place.local(p) for p in pending]
  for k, r in enumerate(runs):
    r.check_finite([_at(h, k) for h in host], first_done)
  return host


def _restore(runs, state, is_main: bool) -> list:
  """Each run's newest checkpoint that restores (damaged ones skipped, checkpoint.py), on the
  host. The runs resume together at the oldest of their steps: a run whose newest is later drops
  the later checkpoints, which it writes again."""
  like = jax.tree.map(lambda x: np.zeros(x.shape[1:], x.dtype), state)
  if not all(r.manager.all_steps() for r in runs):
    missing = next(r.workdir for r in runs if not r.manager.all_steps())
    raise UserError(f"vectorized runs resume together, and {missing} has no checkpoint while "
                    f"the others have: run it alone, or remove the others' checkpoints")
  restored = [checkpoint.restore_latest_good(r.manager, like, move_bad=is_main) for r in runs]
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
  return states
