"""The train state and the pure step functions, wrapped by jax.jit or jax.pmap (parallel.py).

train_step(state, batch, rng) -> (state, metrics) and eval_step(state, batch) -> loss are pure:
the dropout key for a step is rng folded with the step number, so a resumed run repeats exactly.
A train batch has a leading micro-batch axis (A, B, T): gradients are averaged over the A
micro-batches before one update (gradient accumulation). With `axis_name` (under pmap) each
device holds B / devices examples; gradients and metrics are averaged over the devices with
lax.pmean, so every device applies the same update to its replica of the state.
"""

from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from llm_jax.models import init_params
from llm_jax.training import guards
from llm_jax.training.losses import make_loss_fn


# Not flax.training.train_state.TrainState: it carries the optimizer (and apply_fn) as static
# fields, and the vectorized runs build each run's optimizer inside the vmapped step from traced
# values, so no state can carry it; its apply_gradients would also bypass the guarded update
# (nan_policy='skip'). The leaves are the same three, so checkpoints would not tell them apart.
@flax.struct.dataclass
class TrainState:
  step: jax.Array  # () int32: updates done
  params: Any
  opt_state: Any


def create_state(params, tx) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def init_state(model, model_config, tx, rng) -> TrainState:
  """The state before the first update: the model's parameters drawn from rng, the optimizer's
  initial state, step 0. Pure: the training loop and the benchmark jit it, the vectorized runs
  vmap it."""
  return create_state(init_params(model, model_config, rng), tx)


def _with_aux(loss_fn):
  """loss_fn returning the loss alone, or (loss, aux) (losses.py) -> one returning (loss, aux)."""
  def f(*args):
    out = loss_fn(*args)
    return out if isinstance(out, tuple) else (out, {})
  return f


def make_train_step(loss_fn, tx, axis_name=None, skip_nonfinite=False):
  """skip_nonfinite (nan_policy='skip'): an update whose gradients are not all finite is dropped
  (guards.py), and the metrics hold `skipped` (1.0 for a dropped update). A loss_fn may return
  (loss, aux) (losses.py): aux, averaged as the loss is, adds aux['metrics'] to the metrics; and
  `loss_fn.after_update(params, aux) -> params`, where the loss factory gives one, sets
  parameters after the update, outside the gradient (a mixture of experts' balancing biases)."""
  grad_fn = jax.value_and_grad(_with_aux(loss_fn), has_aux=True)
  after_update = getattr(loss_fn, "after_update", None)
  guarded_update = guards.skip_nonfinite(tx) if skip_nonfinite else None

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if axis_name:  # each device its own dropout masks
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    n_micro = jax.tree.leaves(batch)[0].shape[0]
    if n_micro == 1:
      (loss, aux), grads = grad_fn(state.params, jax.tree.map(lambda x: x[0], batch), rng, True)
    else:
      def micro(carry, xs):
        i, micro_batch = xs
        (l, a), g = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, i), True)
        return jax.tree.map(jnp.add, carry, (l, a, g)), None
      first = jax.tree.map(lambda x: x[0], batch)
      aux_shape = jax.eval_shape(lambda p, b: grad_fn(p, b, rng, True), state.params, first)[0][1]
      zeros = (jnp.zeros(()), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape),
               jax.tree.map(jnp.zeros_like, state.params))
      (loss, aux, grads), _ = jax.lax.scan(micro, zeros, (jnp.arange(n_micro), batch))
      loss, aux, grads = jax.tree.map(lambda x: x / n_micro, (loss, aux, grads))
    if axis_name:  # all-reduce one flat vector, not a tuple of leaves (cheaper on CPU, see perf)
      flat, unravel = jax.flatten_util.ravel_pytree((loss, aux, grads))
      loss, aux, grads = unravel(jax.lax.pmean(flat, axis_name))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux.get("metrics", {})}
    if guarded_update:
      updates, opt_state, metrics["skipped"] = guarded_update(grads, state.opt_state, state.params)
    else:
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if after_update is not None:
      params = after_update(params, aux)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(loss_fn, axis_name=None):
  def eval_step(state: TrainState, batch):
    loss = _with_aux(loss_fn)(state.params, batch, None, False)[0]
    return jax.lax.pmean(loss, axis_name) if axis_name else loss

  return eval_step


def make_evaluate(loss_fn, axis_name=None):
  """evaluate(state, batches) -> the mean loss over a stack of batches (E, B, ...), in one scan."""
  eval_step = make_eval_step(loss_fn, axis_name)
  return lambda state, batches: jax.lax.map(lambda b: eval_step(state, b), batches).mean()


class Functions(NamedTuple):
  """What the training loop runs: for one run (`run_functions`), or K vmapped (vectorized.py,
  each argument and result with a leading K axis)."""
  init: Callable  # rng -> the train state
  train_step: Callable  # (state, batch, rng) -> (state, metrics)
  evaluate: Callable  # (state, batches) -> the mean loss
  param_norm: Callable  # params -> their global norm


def run_functions(config, task, tx, axis_name, skip_nonfinite: bool) -> Functions:
  """A single run's functions; axis_name: the placement's (pmap's device axis)."""
  loss_fn = make_loss_fn(task.model, task.input_keys)
  return Functions(init=lambda rng: init_state(task.model, config.model, tx, rng),
                   train_step=make_train_step(loss_fn, tx, axis_name, skip_nonfinite),
                   evaluate=make_evaluate(loss_fn, axis_name), param_norm=optax.tree.norm)
