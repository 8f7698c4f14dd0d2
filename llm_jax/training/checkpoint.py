"""Orbax checkpoints of the train state under <workdir>/checkpoints, with a little JSON metadata.

Orbax wants absolute paths (a relative one fails late, in its background thread): the directory
is made absolute here. Saves are asynchronous; `wait` before reading them or exiting.
"""

import os

import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
  """state: numpy arrays (one host copy); every process calls this (Orbax syncs them)."""
  step = int(state.step)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def restore(manager: ocp.CheckpointManager, state_like, step: int | None = None):
  """(state, meta) from `step` (default: the latest), as numpy arrays shaped like `state_like`."""
  step = manager.latest_step() if step is None else step
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(state_like),
                                                      meta=ocp.args.JsonRestore()))
  return out.state, out.meta
