"""train_and_evaluate(config, workdir): the whole training run, resumable from its workdir.

    data -> model + loss -> jitted train/eval steps -> loop: step, log, evaluate, checkpoint -> sample

The same loop trains K runs at once (`train_runs`, for `llm-jax sweep --vectorize`): their states
stacked on a leading axis and the step vmapped (vectorized.py builds those functions). The loop
reads as a single run's: runs.Runs holds the K runs and splits what each writes (its workdir,
metrics, events, checkpoints and summary, exactly as a single run's), so K appears nowhere here.

The batch of step s is drawn from (seed, s) and the dropout key is folded with s, so a run resumed
from a checkpoint continues exactly as the uninterrupted run would (bitwise on CPU), whether it
stopped on a signal (signals.py: the step finishes and a checkpoint is saved), was killed (the
last complete checkpoint is used; a damaged one is skipped, checkpoint.py) or met a non-finite
loss (guards.py: stop, or skip the update). With several processes, every process stops at the
same step: the signal one of them received is shared at each log step (parallel.first_stop_signal).
Process 0 writes metrics.jsonl and TensorBoard events (events.py) in the workdir, and prints a
plain progress line every train.log_seconds where the progress bar draws nothing (no terminal).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import active_params, flops_per_token
from llm_jax.models.flops import count_params
from llm_jax.training import (finetune, parallel, profile, signals, vectorized,
                              workdir as workdir_lib)
from llm_jax.training.optimizer import make_optimizer, warmup_steps
from llm_jax.training.runs import Progress, Runs
from llm_jax.training.steps import create_state


def train_and_evaluate(config, workdir: str, **profiling) -> dict:
  """Trains config's model in workdir (resuming what is there). Returns the run's summary."""
  return train_runs([config], [workdir], **profiling)[0]


def train_runs(configs, workdirs, profile_dir: str | None = None, profile_steps: int = 5
               ) -> list[dict]:
  """Trains configs[k] in workdirs[k] (resuming what is there). One config: a single run; several:
  one vmapped program (they may differ only in vectorized.VMAPPABLE fields). Returns the
  summaries. With profile_dir, profile_steps steps after the first logged interval are traced
  there (training/profile.py)."""
  runs = Runs(configs, workdirs)
  tc = runs.config.train
  place, state, train_step, evaluate_split, param_norm = _program(runs)
  state, start = _restore_or_init(runs, place, state)
  if start >= tc.max_steps:  # a finished run is read-only: nothing trains, nothing is written
    return runs.finished(start)
  runs.open(start)
  n_params = _announce(runs, place, state, start)
  eval_batches = {name: place.put_batch(b) for name, b in runs.eval_batches().items()}

  def evaluate(step):  # every process: the losses, and the parameters (a collective on a mesh)
    losses = {name: place.local(evaluate_split(state, b)) for name, b in eval_batches.items()}
    runs.log_eval(step, losses, place.to_host(state.params))
    return losses

  def save():  # never a state past a NaN
    runs.check_finite([place.local(p) for p in pending], steps_done - progress.n_since + 1)
    runs.save(place.to_host(state) if runs.several else place.saveable(state))

  losses = evaluate(start) if start == 0 else {}
  pending, progress = [], Progress(tc, start, runs.is_main, runs.K)
  one_process = jax.process_count() == 1
  tracer = profile.StepTracer(profile_dir if runs.is_main else None,
                              min(start + tc.log_interval, tc.max_steps - 1), profile_steps,
                              runs.print)
  try:
    with signals.StopRequest("llm-jax sweep worker" if runs.several else "llm-jax train") as stop:
      for step in range(start, tc.max_steps):
        tracer.before(step)
        state, metrics = train_step(state, place.put_batch(runs.train_batch(step)))
        pending.append(metrics)
        progress.step_done()
        steps_done, last = step + 1, step + 1 == tc.max_steps
        tracer.after(steps_done, state, last=last)
        # one process stops at the next step; several, all at the next log step
        stopping = stop.signum if one_process else None
        if steps_done % tc.log_interval == 0 or last:
          if not one_process:
            stopping = parallel.first_stop_signal(stop.signum)
          host = [place.local(p) for p in pending]  # replicated: a local read
          runs.check_finite(host, steps_done - progress.n_since + 1)
          dt = progress.interval()
          record = runs.log_train(steps_done, host, place.local(param_norm(state.params)), dt)
          progress.show(steps_done, record, float(runs.at(losses["val"], 0)) if losses
                        else float("nan"))
          pending = []
        if steps_done % tc.eval_interval == 0 or last:
          losses = evaluate(steps_done)
        if steps_done % tc.checkpoint_every == 0 or last or stopping:
          save()
        if stopping:
          runs.wait(steps_done)
          raise signals.Interrupted(stopping, steps_done, ", ".join(r.workdir for r in runs.runs))
        progress.resume_clock()
  finally:
    tracer.close()
    progress.close()
    runs.close()
  for r in runs.runs:
    r.wait(tc.max_steps)
    r.manager.close()
  final = place.to_host(state)  # every process: a collective under a mesh
  return runs.finish(final, losses, n_params, start, time.perf_counter() - progress.t_start,
                     progress.steady_ms())


def _program(runs):
  """The placement, the initial train state on it, and the placed step functions: (place, state,
  train_step, evaluate, param_norm)."""
  configs, config, tc = runs.configs, runs.config, runs.config.train
  tx = make_optimizer(tc)  # (the vmapped runs build theirs from their knobs, with its shapes)
  place = parallel.placement(config, runs.task.model, tx, lead=int(runs.several))
  keys = [jax.random.split(jax.random.key(c.seed)) for c in configs]  # (init, dropout) per run
  if runs.several:
    fns = vectorized.functions(configs, runs.tasks, runs.skip)
    dropout_rng = jnp.stack([k[1] for k in keys])
  else:
    fns = vectorized.one_run(config, runs.task, tx, place.axis_name, runs.skip)
    dropout_rng = keys[0][1]
  # a constant of the program, on no device
  init_key = np.asarray(jax.random.key_data(jnp.stack([k[0] for k in keys]) if runs.several
                                            else keys[0][0]))
  state = place.create_state(lambda: fns.init(jax.random.wrap_key_data(init_key)))
  run_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) // runs.K
  for r in runs.runs:
    workdir_lib.check_free_space(r.workdir, run_bytes)
  train_step, evaluate = place.steps(fns.train_step, fns.evaluate, dropout_rng)
  return place, state, train_step, evaluate, place.replicated_fn(fns.param_norm)


def _restore_or_init(runs, place, state):
  """(state, its step): each run's newest good checkpoint; else, for train.init_from, the source's
  parameters with a fresh optimizer state at step 0; else the fresh state."""
  if any([r.checkpoints().all_steps() for r in runs.runs]):  # (a list: every manager opens)
    state = runs.restore(state, place)
  elif runs.config.train.init_from:
    tx = make_optimizer(runs.config.train)
    state = place.create_state(lambda p: create_state(p, tx), finetune.load_params(runs.config))
  return state, int(np.asarray(place.local(state.step)).reshape(-1)[0])


def _si(x: float) -> str:
  for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if x >= scale:
      return f"{x / scale:.2f}{unit}"
  return f"{x:.0f}"


def _announce(runs, place, state, start: int) -> int:
  """The two start-of-run lines (the run, the model and its placement). Returns the parameter
  count of one run."""
  config, tc = runs.config, runs.config.train
  n_params, n_params_flops = count_params(jax.eval_shape(lambda p: runs.at(p, 0), state.params))
  runs.print(f"llm-jax: {config.model.name}, {runs.task.summary_line}, " +
             (f"resuming at step {start}" if start else "starting") + f" in {runs.where}",
             flush=True)
  if warmup_steps(tc) < tc.warmup_steps:
    runs.print(f"llm-jax: train.warmup_steps={tc.warmup_steps} is not shorter than the run's "
               f"{tc.lr_decay_steps} steps: the learning rate warms up over all "
               f"{warmup_steps(tc)} of them", flush=True)
  flops = flops_per_token(config.model, n_params_flops)
  active = active_params(config.model, n_params)  # a mixture of experts': fewer
  runs.print(f"llm-jax: {n_params / 1e6:.2f}M parameters" +
             (f" ({active / 1e6:.2f}M active)" if active != n_params else "") + ", "
             f"{_si(flops) + 'FLOPs' if flops else 'n/a FLOPs'}/token, {jax.process_count()} "
             f"process(es), {place.n_devices} device(s) ({place.description}), global batch "
             f"{tc.batch_size * tc.grad_accum_steps} ({tc.batch_size // place.batch_divisor} "
             f"examples per batch shard x {tc.grad_accum_steps} accumulation steps), "
             f"{runs.tokens_per_step:,} tokens/step" +
             (f" each, {runs.K} runs vmapped" if runs.several else ""), flush=True)
  return n_params
