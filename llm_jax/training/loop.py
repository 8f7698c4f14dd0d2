"""train_and_evaluate(config, workdir): one run, top to bottom, resumable from its workdir.

    data -> model + state -> restore -> loop: step, log, evaluate, checkpoint, stop on a signal
    -> the sample and the summary

The batch of step s is drawn from (seed, s) and the dropout key is folded with s, so a resumed run
continues exactly as the uninterrupted run would (bitwise on CPU), whether it stopped on a signal
(signals.py), was killed (checkpoint.py: the last complete checkpoint) or met a non-finite loss
(guards.py). Every process stops at the same step (parallel.first_stop_signal). Process 0 writes
the run's record (record.py). The caller validates the config (config.validate), and lends the
loop what lies above training as `Hooks`.
"""

import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from llm_jax.errors import UserError
from llm_jax.models import active_params, flops_per_token
from llm_jax.models.flops import count_params, si
from llm_jax.training import (checkpoint, finetune, parallel, profile, signals,
                              workdir as workdir_lib)
from llm_jax.training.optimizer import lr_schedule, make_optimizer, warmup_steps
from llm_jax.training.progress import Progress
from llm_jax.training.record import EVAL_SAMPLE_TOKENS, Run
from llm_jax.training.steps import create_state, run_functions
from llm_jax.training.tasks import build_task


class Hooks(NamedTuple):
  """What the caller (the command line, the sweep) lends the loop from above training."""
  evaluations: Callable | None = None  # (config, task, params, step) -> metrics (harness)
  defaults: dict | None = None  # default_config().to_dict(): fills runs saved by older versions
  fix_dtype: Callable | None = None  # (model, saved model) -> 'auto' fixed (peaks.fix_run_dtype)


def train_and_evaluate(config, workdir: str, hooks: Hooks = Hooks(), profile_dir: str | None = None,
                       profile_steps: int = 5) -> dict:
  """Trains config's model in workdir (resuming what is there). Returns the run's summary. With
  profile_dir, profile_steps steps after the first logged interval are traced there
  (training/profile.py)."""
  config = config.copy_and_resolve_references()  # the run's own: Run fixes its 'auto' dtype
  tc = config.train
  check_hooks(config, hooks)
  parallel.init_distributed(config.distributed)
  is_main = jax.process_index() == 0  # only it prints and writes the files beside checkpoints
  # the data (the tokenizer a resumed run saved), the model, the train state
  run = Run(config, workdir, is_main, hooks.defaults, fix_dtype=hooks.fix_dtype)
  task = build_task(config, run.tokenizer)
  workdir_lib.check_same_data(run.workdir, task.data_identity)  # a prepared dataset's run
  tx = make_optimizer(tc)
  place = parallel.placement(config, task.model, tx)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  fns = run_functions(config, task, tx, place.axis_name, tc.nan_policy == "skip")
  state, train_step, evaluate, param_norm = program(place, fns, init_rng, dropout_rng)
  workdir_lib.check_free_space(run.workdir, state_bytes(state))
  state, start = restore_or_init(run, place, state, tx, hooks)
  if start >= tc.max_steps:  # a finished run is read-only: nothing trains, nothing is written
    return run.finished(start)
  run.open(start, task)
  n_params = announce(config, task, place, state.params, start, run.workdir, is_main,
                      dtype_line=run.dtype_line)
  eval_batches = {name: place.put_batch(b) for name, b in task.eval_batches.items()}

  def evaluate_now(state, step):  # every process (the parameters: a collective on a mesh)
    losses = {name: float(place.local(evaluate(state, b))) for name, b in eval_batches.items()}
    log_evaluation(run, task, hooks, step, losses, place.to_host(state.params))
    return losses

  losses = evaluate_now(state, start) if start == 0 else {}
  progress = Progress(tc, start, is_main)
  tracer = profile.StepTracer(profile_dir if is_main else None,
                              min(start + tc.log_interval, tc.max_steps - 1), profile_steps,
                              print if is_main else lambda *a, **k: None)
  schedule, n_tokens = lr_schedule(tc), tokens_per_step(config, task)
  one_process, pending = jax.process_count() == 1, []
  try:
    with signals.StopRequest("llm-jax train") as stop:
      for step in range(start, tc.max_steps):
        tracer.before(step)
        state, metrics = train_step(state, place.put_batch(task.train_batch(step)))
        pending.append(metrics)
        progress.step_done()
        steps_done, last = step + 1, step + 1 == tc.max_steps
        tracer.after(steps_done, state, last=last)
        # one process stops at the next step; more than one, all at the next log step
        stopping = stop.signum if one_process else None
        if steps_done % tc.log_interval == 0 or last:
          if not one_process:
            stopping = parallel.first_stop_signal(stop.signum)
          host = [place.local(p) for p in pending]  # replicated: a local read
          run.check_finite(host, steps_done - progress.n_since + 1)
          dt = progress.interval()
          record = run.log_train(steps_done, host, place.local(param_norm(state.params)),
                                 float(schedule(steps_done - 1)), dt, n_tokens)
          progress.show(steps_done, record["loss"], losses["val"] if losses else float("nan"),
                        record["tokens_per_s"])
          pending = []
        if steps_done % tc.eval_interval == 0 or last:
          losses = evaluate_now(state, steps_done)
        if steps_done % tc.checkpoint_every == 0 or last or stopping:  # never a state past a NaN
          run.check_finite([place.local(p) for p in pending], steps_done - progress.n_since + 1)
          run.save(place.saveable(state))
        if stopping:
          run.wait(steps_done)
          raise signals.Interrupted(stopping, steps_done, run.workdir)
        progress.resume_clock()
  finally:
    tracer.close()
    progress.close()
    run.close()
  run.close_checkpoints(tc.max_steps)
  final = place.to_host(state)  # every process: a collective under a mesh
  return run.finish(int(final.step), losses, n_params, n_tokens, tc.max_steps - start,
                    time.perf_counter() - progress.t_start, progress.steady_ms(),
                    sample=lambda: task.sample(final.params, tc.sample_tokens, config.seed))


def check_hooks(config, hooks: Hooks) -> None:
  if config.train.harness_tasks and hooks.evaluations is None:
    raise UserError(f"config.train.harness_tasks={config.train.harness_tasks!r} needs the "
                    f"harness: train through `llm-jax train` or `llm-jax sweep`, or pass "
                    f"loop.Hooks(evaluations=harness.TrainingMetrics())")


def log_evaluation(run, task, hooks: Hooks, step: int, losses: dict, params) -> None:
  """The run's record of an evaluation: its losses, the task's metrics and the hooks' (process 0
  computes those), a short sample."""
  config, extra, sample = run.config, {}, None
  if run.is_main:
    extra = task.eval_metrics(params, losses)
    if hooks.evaluations:
      extra.update(hooks.evaluations(config, task, params, step))
    n = min(config.train.sample_tokens, EVAL_SAMPLE_TOKENS)
    sample = task.sample(params, n, config.seed) if n else None
  run.log_eval(step, losses, extra, sample)


def restore_or_init(run, place, state, tx, hooks: Hooks):
  """(state, its step): the newest good checkpoint; else, for train.init_from, the source's
  parameters with a fresh optimizer state at step 0; else the fresh state."""
  if run.checkpoints().all_steps():
    state, meta = checkpoint.restore_latest_good(run.manager, place.saveable(state),
                                                 move_bad=run.is_main)
    state = place.place(state)
    run.meta.update(meta)
  elif run.config.train.init_from:
    state = place.create_state(lambda p: create_state(p, tx),
                               finetune.load_params(run.config, hooks.defaults))
  return state, first_step(place, state)


def first_step(place, state) -> int:
  return int(np.asarray(place.local(state.step)).reshape(-1)[0])


def program(place, fns, init_rng, dropout_rng):
  """(the initial train state, placed; the placed train step, evaluation and parameter norm)."""
  init_key = np.asarray(jax.random.key_data(init_rng))  # a constant of the program, on no device
  state = place.create_state(lambda: fns.init(jax.random.wrap_key_data(init_key)))
  train_step, evaluate = place.steps(fns.train_step, fns.evaluate, dropout_rng)
  return state, train_step, evaluate, place.replicated_fn(fns.param_norm)


def state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def tokens_per_step(config, task) -> int:
  return config.train.batch_size * config.train.grad_accum_steps * task.tokens_per_example


def announce(config, task, place, params, start: int, where: str, is_main: bool,
             more: str = "", dtype_line: str | None = None) -> int:
  """The two start-of-run lines (the run, the model and its placement; `more` ends the second).
  `params`: the run's (or their shapes). Returns its parameter count."""
  tc, say = config.train, print if is_main else lambda *a, **k: None
  n_params, n_params_flops = count_params(params)
  say(f"llm-jax: {config.model.name}, {task.summary_line}, " +
      (f"resuming at step {start}" if start else "starting") + f" in {where}", flush=True)
  if dtype_line:  # what model.dtype 'auto' chose for the run, and why (Hooks.fix_dtype)
    say(f"llm-jax: {dtype_line}", flush=True)
  if warmup_steps(tc) < tc.warmup_steps:
    say(f"llm-jax: train.warmup_steps={tc.warmup_steps} is not shorter than the run's "
        f"{tc.lr_decay_steps} steps: the learning rate warms up over all "
        f"{warmup_steps(tc)} of them", flush=True)
  flops = flops_per_token(config.model, n_params_flops)
  active = active_params(config.model, n_params)  # a mixture of experts': fewer
  say(f"llm-jax: {n_params / 1e6:.2f}M parameters" +
      (f" ({active / 1e6:.2f}M active)" if active != n_params else "") + ", "
      f"{si(flops) + 'FLOPs' if flops else 'n/a FLOPs'}/token, {jax.process_count()} "
      f"process(es), {place.n_devices} device(s) ({place.description}), global batch "
      f"{tc.batch_size * tc.grad_accum_steps} ({tc.batch_size // place.batch_divisor} "
      f"examples per batch shard x {tc.grad_accum_steps} accumulation steps), "
      f"{tokens_per_step(config, task):,} tokens/step{more}", flush=True)
  return n_params
