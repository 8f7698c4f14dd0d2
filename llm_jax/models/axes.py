"""The logical axes of every parameter and of the residual stream, named where they are created.

A parameter's initializer is wrapped by `param_init(init, *axes)` (flax's
nn.with_logical_partitioning), so that model.init returns each array boxed with the names of its
axes; llm_jax/training/sharding.py maps the names to the axes of a device mesh with one table of
rules. Without a mesh the names change nothing: `init_params` unboxes them, and `constrain` is a
no-op outside `sharded_by` (which the training steps enter while they are traced).

(Not flax's nn.logical_axis_rules: under it, flax re-runs a DenseGeneral's boxed initializer to
check shapes, and the box constrains the flat 2-D kernel with the names of the 4-D one.)

    vocab      token ids (embedding rows, the head's outputs)
    embed      the model width C, in matrices and embeddings
    mlp        the FFN's hidden units F
    heads      query heads H;  kv_heads: key/value heads (fewer under grouped-query attention)
    head_dim   D = C / H;  qkv: the 3 (or 2) projections stacked in one kernel
    length     positions (a learned position table's rows)
    norm       vectors of width C: norm scales and biases, biases of projections into the stream
    layers     the leading axis of layers stacked by nn.scan (model.scan_layers)
Activations: batch (examples), act_length, act_embed.
"""

import contextlib
import contextvars

import flax.linen as nn
import jax

# the residual stream's axes, (B, T, C)
STREAM = ("batch", "act_length", "act_embed")


def param_init(init, *axes):
  """init, its array's axes named."""
  return nn.with_logical_partitioning(init, axes)


# (names, shape) -> the jax.sharding.Sharding of an activation, while a sharded step is traced
_SHARDING = contextvars.ContextVar("llm_jax_activation_sharding", default=None)


@contextlib.contextmanager
def sharded_by(sharding_of):
  """Within: `constrain` places activations at sharding_of(names, shape)."""
  token = _SHARDING.set(sharding_of)
  try:
    yield
  finally:
    _SHARDING.reset(token)


def constrain(x, axes):
  """A sharding constraint on an activation by its axes' names (a no-op outside sharded_by)."""
  sharding_of = _SHARDING.get()
  if sharding_of is None:
    return x
  return jax.lax.with_sharding_constraint(x, sharding_of(axes, x.shape))
