"""Non-finite losses and gradients: stop the run naming the step and the quantity, or skip them.

config.train.nan_policy = 'stop': the loop checks the per-step metrics it fetches at log steps,
and always before saving a checkpoint, so a state that went through a NaN or inf is never saved
(the last good checkpoint stays). 'skip': the optimizer goes through optax.apply_if_finite, which
drops an update whose gradients are not all finite (zero updates, the optimizer state kept but for
the learning-rate schedule's count, which follows the step; every device agrees, the gradients
being averaged over devices), and the step reports it in a `skipped` metric, which the loop counts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

# the per-step metrics that must stay finite, in the order they are named
CHECKED = ("loss", "grad_norm")


def skip_nonfinite(tx: optax.GradientTransformation):
  """update(grads, opt_state, params) -> (updates, opt_state, skipped): tx's update through
  optax.apply_if_finite. Its counters start afresh at each step and are not kept, so the train
  state (and a checkpoint) is the same tree under either nan_policy and a run may change policy
  when it resumes; the count of skipped updates lives with the checkpoint's metadata."""
  # counted from zero at each step, a non-finite update is the first in a row: with 1 allowed in
  # a row, apply_if_finite always drops it
  safe = optax.apply_if_finite(tx, max_consecutive_errors=1)
  zero = jnp.zeros([], jnp.int32)

  def update(grads, opt_state, params):
    fresh = optax.ApplyIfFiniteState(notfinite_count=zero, last_finite=jnp.array(True),
                                     total_notfinite=zero, inner_state=opt_state)
    updates, state = safe.update(grads, fresh, params)
    skipped = jnp.logical_not(state.last_finite)
    # apply_if_finite keeps the whole inner state on a dropped update, the learning-rate
    # schedule's count too: it would fall behind the train state's step, and the rate applied
    # behind the rate logged (schedule(step)). The schedule's counts move on with the step (a
    # dropped update spends its place in the schedule); the moments and Adam's bias correction
    # count the updates applied
    inner = jax.tree.map(
        lambda s: s._replace(count=s.count + skipped.astype(s.count.dtype))
        if isinstance(s, optax.ScaleByScheduleState) else s,
        state.inner_state, is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState))
    return updates, inner, skipped.astype(jnp.float32)

  return update


def first_nonfinite(host_metrics: list[dict], first_done: int):
  """(step, name, value) of the first non-finite checked metric, or None. host_metrics[i] are
  the metrics of the update that ended at step first_done + i."""
  for i, m in enumerate(host_metrics):
    for name in CHECKED:
      value = float(np.asarray(m[name]))
      if not np.isfinite(value):
        return first_done + i, name, value
  return None


def finite_mean(values) -> float:
  """The mean of the finite values (skipped steps left out), NaN when there are none."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return float(v.mean()) if v.size else float("nan")
