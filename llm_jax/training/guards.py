"""Non-finite losses and gradients: stop the run naming the step and the quantity, or skip them.

config.train.nan_policy = 'stop': the loop checks the per-step metrics it fetches at log steps,
and always before saving a checkpoint, so a state that went through a NaN or inf is never saved
(the last good checkpoint stays). 'skip': the step itself keeps the old parameters and optimizer
state whenever its loss or gradient norm is not finite (every device agrees: both are averaged
over devices), and counts it in a `skipped` metric.
"""

import jax
import jax.numpy as jnp
import numpy as np

# the per-step metrics that must stay finite, in the order they are named
CHECKED = ("loss", "grad_norm")


def skip_nonfinite(train_step):
  """train_step(state, batch, rng) -> (state, metrics), wrapped to drop non-finite updates.

  The step counter still advances, so the batch and dropout key of the next step are the ones an
  uninterrupted run would draw."""

  def step(state, batch, rng):
    new, metrics = train_step(state, batch, rng)
    ok = jnp.all(jnp.stack([jnp.isfinite(metrics[k]) for k in CHECKED]))

    def keep(a, b):
      return jnp.where(ok, a, b)

    new = new.replace(params=jax.tree.map(keep, new.params, state.params),
                      opt_state=jax.tree.map(keep, new.opt_state, state.opt_state))
    return new, {**metrics, "skipped": 1.0 - ok.astype(jnp.float32)}

  return step


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
