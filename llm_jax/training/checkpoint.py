"""Orbax checkpoints of the train state under <workdir>/checkpoints, with a little JSON metadata.

Orbax wants absolute paths (a relative one fails late, in its background thread): the directory
is made absolute here. Saves are asynchronous; `wait` before reading them or exiting.
"""

import os

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def restore(manager: ocp.CheckpointManager, state_like, step: int | None = None):
  """(state, meta) from `step` (default: the latest), shaped and placed like `state_like`."""
  step = manager.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                      meta=ocp.args.JsonRestore()))
  return out.state, out.meta
