"""K runs in one compiled program: the functions of the training loop, vmapped over the train
state, the batch stream and the knobs.

Runs that share every shape (same model, data, batch, schedule lengths) and differ only in
VMAPPABLE fields (seed, learning rates, weight decay, dropout rate) train together: the state is
stacked along a leading axis K, step s feeds each run its own batch (from its own seed), and the
optimizer and the dropout rate are built inside the vmapped step from that run's traced values.
The training loop (loop.train_runs) runs them as it runs one (runs.Runs splits what they write):
each run keeps its own workdir (config.json, metrics.jsonl, events, checkpoints, summary.json), the
NaN policy, damaged-checkpoint fallback and disk checks; its per-step losses equal a separate run's
(to float rounding).
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from llm_jax.errors import UserError
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import make_optimizer
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


class Functions(NamedTuple):
  """What the training loop runs: for one run, or K vmapped (each argument and result with a
  leading K axis)."""
  init: Callable  # rng -> the train state
  train_step: Callable  # (state, batch, rng) -> (state, metrics)
  evaluate: Callable  # (state, batches) -> the mean loss
  param_norm: Callable  # params -> their global norm


def one_run(config, task, tx, axis_name, skip_nonfinite: bool) -> Functions:
  """A single run's functions (no K axis); axis_name: the placement's (pmap's device axis)."""
  loss_fn = make_loss_fn(task.model, task.input_keys)
  return Functions(init=lambda rng: init_state(task.model, config.model, tx, rng),
                   train_step=make_train_step(loss_fn, tx, axis_name, skip_nonfinite),
                   evaluate=make_evaluate(loss_fn, axis_name), param_norm=optax.tree.norm)


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
