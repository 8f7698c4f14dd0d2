"""The device mesh, and where each array of the train state and of a batch lives on it.

    mesh axes   data    batch split, parameters replicated (data parallelism)
                fsdp    batch split too, and every matrix and embedding split along its model
                        width (fully sharded data parallelism, ZeRO-3): a layer's weights are
                        gathered when it runs, its gradients reduce-scattered back
                tensor  attention heads and FFN hidden units split (Megatron: the projections
                        into heads and hidden units column-parallel, those back out row-parallel,
                        one all-reduce after each)
                expert  a mixture of experts' experts split (expert parallelism: each device
                        holds E / expert of them), and the batch split too, as by data; the
                        tokens reach their experts' devices and come back by the sharding
                        constraints of models/moe.py (GSPMD inserts the collectives)

The models name the axes of their parameters (models/axes.py); RULES maps each name to a mesh
axis. An axis of a size that the mesh axis does not divide is replicated instead (e.g. a
character vocabulary of 65 under tensor=2), as is a mesh axis already used by another dimension
of the same array. The optimizer's moments take their parameters' shardings. jax.jit then runs
the one pure step over the whole mesh (GSPMD), inserting the collectives.
"""

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from llm_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "expert", "tensor")
# the examples of a batch are split over the data axes and the expert one
BATCH = ("data", "fsdp", "expert")

# logical axis (models/axes.py) -> mesh axis (None: replicated)
RULES = (
    ("batch", BATCH),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("length", None),
    ("norm", None),
    ("layers", None),
    ("expert", "expert"),
    ("act_length", None),
    ("act_embed", None),
)


def mesh_shape(mesh_cfg, n_devices: int) -> dict:
  """config.mesh -> {axis: size} with the -1 (at most one: the remaining devices) resolved; a
  product other than the device count is a UserError naming the fields."""
  sizes = {a: int(mesh_cfg.get(a, 1)) for a in MESH_AXES}  # (an older run's config: no expert)
  fields = ", ".join(f"config.mesh.{a}={s}" for a, s in sizes.items())
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise UserError(f"{fields}: use sizes of 1 or more, and -1 on at most one axis (the devices "
                    f"left over)")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if n_devices % known:
      raise UserError(f"{fields}: the {n_devices} devices do not divide by {known}; choose "
                      f"sizes whose product divides {n_devices}")
    sizes[free[0]] = n_devices // known
  if int(np.prod(list(sizes.values()))) != n_devices:
    raise UserError(f"{fields}: the product is {int(np.prod(list(sizes.values())))}, not the "
                    f"{n_devices} devices there are; make it {n_devices} (-1 on one axis takes "
                    f"the rest)")
  return sizes


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """The (data, fsdp, expert, tensor) mesh over `devices` (default: every device of every
  process), its axes Auto: jit's sharding propagation places what no rule names."""
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


def spec_for(names, shape, mesh) -> P:
  """Logical axis names -> a PartitionSpec on `mesh` by RULES (see the module docstring)."""
  # Not flax's nn.logical_to_mesh_sharding: it maps names alone, so it splits an axis the mesh axis
  # does not divide (a 65-character vocabulary under tensor=2), which jit refuses; and under its
  # nn.logical_axis_rules the parameters' boxes constrain DenseGeneral's flattened kernels with the
  # names of their unflattened shapes, an error at trace time (models/axes.py)
  rules, used, out = dict(RULES), set(), []
  for name, size in zip(names, shape):
    axes = rules.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else axes or ()
    if len(axes) > 1:  # the batch's: its mesh axes of size 1 left out (expert=1, as a rule)
      axes = tuple(a for a in axes if mesh.shape[a] > 1) or axes[:1]
    n = int(np.prod([mesh.shape[a] for a in axes]))
    if axes and n > 1 and size % n == 0 and not used & set(axes):
      used |= set(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
    else:
      out.append(None)
  return P(*out)


def param_shardings(boxed, mesh, lead=()):
  """{parameter: NamedSharding} for the family's parameters, from their abstract boxed init
  (models.init_params(..., boxed=True) under jax.eval_shape); `lead`: mesh axes (or None) of
  leading axes stacked before each parameter's own (the vectorized runs' K)."""
  names = nn.get_partition_spec(boxed)  # the logical names, as PartitionSpecs
  shapes = nn.unbox(boxed)
  return jax.tree.map(lambda n, s: NamedSharding(mesh, P(*lead, *spec_for(tuple(n), s.shape,
                                                                          mesh))),
                      names, shapes, is_leaf=lambda x: isinstance(x, P))


def state_shardings(abstract_state, params_sharding, tx, mesh, lead=()):
  """The TrainState's shardings: the parameters', the optimizer's moments the same as their
  parameters', its counters (and the step) replicated, and so is a moment shaped otherwise than
  its parameter (Adafactor's factored row and column statistics, a sum of the dimensions, not
  their product). A state that holds a part of the parameters (Muon's, which leaves the rest to
  AdamW) has optax's MaskedNode for the others, kept as it is."""
  replicated = NamedSharding(mesh, P(*lead))

  def moment(x, s, p):
    if isinstance(x, optax.MaskedNode):
      return x
    return s if x.shape == p.shape else replicated

  opt = optax.tree_map_params(tx, moment, abstract_state.opt_state, params_sharding,
                              abstract_state.params, transform_non_params=lambda _: replicated,
                              is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return abstract_state.replace(step=replicated, params=params_sharding, opt_state=opt)


def batch_sharding(mesh, axis: int) -> NamedSharding:
  """Arrays whose axis `axis` is the batch: split over BATCH, the others replicated."""
  return NamedSharding(mesh, P(*[None] * axis, BATCH))


def per_device_bytes(tree) -> int:
  """The bytes of `tree`'s arrays that one device holds (the first device's shards)."""
  device = jax.local_devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == device)
