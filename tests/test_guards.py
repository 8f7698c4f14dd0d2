"""guards.py under train.nan_policy='skip': a dropped update keeps the optimizer's moments, while
the learning-rate schedule follows the step, so the rate the loop logs is the rate applied."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llm_jax.config import default_config
from llm_jax.training import guards
from llm_jax.training.optimizer import lr_schedule, make_optimizer


def test_after_a_skipped_update_the_logged_lr_is_the_applied_one():
  t = default_config().train
  # SGD without momentum, decay or clipping: an update is -lr x the gradient, so it shows the rate
  t.update(optimizer="sgd", momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip=0.0,
           schedule="linear", warmup_steps=0, learning_rate=1.0, min_lr=0.1, max_steps=10,
           lr_decay_steps=10)
  tx, schedule = make_optimizer(t), lr_schedule(t)
  update = guards.skip_nonfinite(tx)
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  grads = {"ok": {"w": jnp.ones(3)}, "nan": {"w": jnp.full(3, jnp.nan)}}
  applied = []
  for step, kind in enumerate(["ok", "nan", "nan", "ok", "ok"]):
    updates, state, skipped = update(grads[kind], state, params)
    assert float(skipped) == (kind == "nan")
    # the loop logs, after `step + 1` updates done, lr_schedule(step): the rate of this update
    logged = float(schedule(step))
    applied.append(-float(updates["w"][0]))
    if kind == "ok":
      np.testing.assert_allclose(applied[-1], logged, rtol=1e-6)
    else:
      assert applied[-1] == 0.0
  # the rates applied are the schedule's at steps 0, 3 and 4, not at 0, 1 and 2
  np.testing.assert_allclose([applied[i] for i in (0, 3, 4)],
                             [float(schedule(i)) for i in (0, 3, 4)], rtol=1e-6)
  assert applied[3] < applied[0] - 0.2


def test_a_skipped_update_keeps_the_moments_and_adams_count():
  t = default_config().train
  t.update(grad_clip=0.0, warmup_steps=0, max_steps=10, lr_decay_steps=10)
  tx = make_optimizer(t)
  update = guards.skip_nonfinite(tx)
  params = {"kernel": jnp.ones((2, 2))}
  state = tx.init(params)
  _, state, _ = update({"kernel": jnp.ones((2, 2))}, state, params)
  _, after, skipped = update({"kernel": jnp.full((2, 2), jnp.inf)}, state, params)
  assert float(skipped) == 1.0
  adam = lambda s: [x for x in jax.tree.leaves(
      s, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      if isinstance(x, optax.ScaleByAdamState)][0]
  np.testing.assert_array_equal(adam(after).mu["kernel"], adam(state).mu["kernel"])
  assert int(adam(after).count) == int(adam(state).count) == 1
