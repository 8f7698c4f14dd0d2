"""Orbax checkpoints of the train state under <workdir>/checkpoints, with a little JSON metadata.

Orbax wants absolute paths (a relative one fails late, in its background thread): the directory
is made absolute here. Saves are asynchronous; `wait` before reading them or exiting.

Faults: Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so
a process killed mid-save leaves only such a leftover, which is deleted on start. A
step that is complete by name but damaged (a truncated or missing file) fails to restore:
`restore_latest_good` then warns and tries the next older step; the damaged ones are moved aside
to <workdir>/checkpoints_corrupt/ once a good one is found. A checkpoint of another model (other
shapes, read from its metadata before any array) is a UserError, not a fallback.

Part of the state restores alone (Orbax's partial restore): `generate` and `evaluate` read the
step and the parameters without building an optimizer for the rest.
"""

import asyncio
import contextlib
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from llm_jax.errors import UserError

CORRUPT_DIR = "checkpoints_corrupt"


# in the name of a step Orbax has not finished writing: `<step>.orbax-checkpoint-tmp-<time>`
UNFINISHED = ".orbax-checkpoint-tmp"


def remove_unfinished(directory: str) -> None:
  """A killed save leaves an unfinished step: never a step, deleted before the manager opens (by
  process 0). Here, not by Orbax's cleanup_tmp_directories: that runs in a thread only a save
  waits for, so a command failing next (and removing the folder it made,
  workdir.removed_if_failed) would leave a thread behind that looks for the folder."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if UNFINISHED in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def make_manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if create:
    remove_unfinished(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                         cleanup_tmp_directories=False)
  # handlers named up front: a step's metadata (its arrays' shapes) reads before any restore.
  # The state's is the PyTree handler (what StandardCheckpointHandler wraps, so the steps it wrote
  # read alike), whose restore can be partial
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, state, meta: dict) -> None:
  """state: numpy arrays (one host copy); every process calls this (Orbax syncs them)."""
  step = int(state.step)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def _name(path) -> str:
  """A key path as Orbax names the array on disk: 'opt_state.1.0.mu.h_0.attn.out.kernel'."""
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class DamagedCheckpoint(Exception):
  """A step whose files are incomplete or unreadable (its metadata as well as its arrays)."""


def check_shapes(manager: ocp.CheckpointManager, step: int, like) -> None:
  """A checkpoint of another model has other shapes: refused from its metadata, naming an array,
  before Orbax reads (and rejects) the arrays themselves. `like`: as restore's. Metadata that is
  missing (Orbax then reads it as None, or as no arrays) is damage, not another model."""
  metadata = manager.item_metadata(step)["state"]
  leaves = jax.tree_util.tree_flatten_with_path(metadata)[0] if metadata is not None else []
  if not leaves:
    raise DamagedCheckpoint("the metadata of its state (state/_METADATA) is missing or empty")
  on_disk = {_name(p): tuple(m.shape) for p, m in leaves}
  wanted = {_name(p): np.shape(x) for p, x in jax.tree_util.tree_flatten_with_path(like)[0]}
  if _is_partial(like):  # the fields asked for are compared, the others are not read
    on_disk = {n: s for n, s in on_disk.items() if n.split(".")[0] in like}
  where = f"checkpoint {manager.directory / str(step)}"
  fix = "use a fresh --workdir, or the config of the run that wrote it (its config.json)"
  for name in sorted(on_disk.keys() & wanted.keys(), key=lambda n: (not n.startswith("params"), n)):
    if on_disk[name] != wanted[name]:
      raise UserError(f"{where} holds another model ({name} is {on_disk[name]}, this config "
                      f"makes {wanted[name]}): {fix}")
  if on_disk.keys() != wanted.keys():
    name = sorted(on_disk.keys() ^ wanted.keys())[0]
    raise UserError(f"{where} holds another model or optimizer ({name} is in only one of the "
                    f"checkpoint and this config): {fix}")


def _is_partial(like) -> bool:
  """A dict of some of the state's fields ({'step': ..., 'params': ...}), not the state itself."""
  return isinstance(like, dict)


class _DrainingLoop(asyncio.SelectorEventLoop):
  """An event loop that, closed while tasks are pending, first lets them finish. Orbax (0.12)
  runs the reads of a restore (the arrays' metadata, then the arrays) in a fresh loop and closes
  it as soon as one read fails, while the others are still in flight in TensorStore: their
  completions then call the closed loop and raise 'Event loop is closed' in TensorStore's
  threads, long after the restore. Drained, they end (a damaged checkpoint fails them as fast as
  the first) before the loop closes."""

  def close(self):
    pending = [t for t in asyncio.all_tasks(self) if not t.done()]
    if pending and not self.is_running() and not self.is_closed():
      self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self):
    return _DrainingLoop()


@contextlib.contextmanager
def _draining_event_loops():
  """The event loops made meanwhile (Orbax's, in this thread or another) are _DrainingLoops."""
  old = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_DrainingPolicy())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(old)


def restore(manager: ocp.CheckpointManager, like, step: int | None = None):
  """(state, meta) from `step` (default: the latest), as numpy arrays shaped like `like`: the
  whole train state, or a dict of some of its fields (those alone are read, as a dict)."""
  step = manager.latest_step() if step is None else step
  state = ocp.args.PyTreeRestore(item=like, partial_restore=_is_partial(like),
                                 restore_args=ocp.checkpoint_utils.construct_restore_args(like))
  with _draining_event_loops():  # the metadata's reads and the arrays'
    check_shapes(manager, step, like)
    out = manager.restore(step, args=ocp.args.Composite(state=state, meta=ocp.args.JsonRestore()))
  return out.state, out.meta


def _describe(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:200]}" + ("..." if len(text) > 200 else "")


def restore_latest_good(manager: ocp.CheckpointManager, like, move_bad: bool = True):
  """(state, meta) of the newest step that restores (`like`: as restore's), newest first; each
  damaged step is named in a warning. Once a good step is found, the damaged newer ones are
  (move_bad) moved to <workdir>/checkpoints_corrupt/<step>, so that the run can save those steps
  again. No good step: a UserError, and nothing is moved."""
  directory = manager.directory
  bad = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      out = restore(manager, like, step)
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001 -- Orbax and TensorStore raise many kinds
      bad.append(step)
      print(f"llm-jax: warning: checkpoint {directory / str(step)} is damaged ({_describe(e)}); "
            f"trying an older one", file=sys.stderr, flush=True)
      continue
    _forget(manager, bad, move_bad)
    return out
  raise UserError(f"no checkpoint in {directory} restores (damaged: steps "
                  f"{', '.join(map(str, bad))}): start over in a fresh --workdir, or restore the "
                  f"checkpoints from a backup")


def _forget(manager: ocp.CheckpointManager, bad, move_bad: bool) -> None:
  """Every process calls this after its restore, with the same steps: once all have read, the
  damaged steps are moved aside (by one process) and every manager forgets them, so that a later
  save of the same step is not refused as existing on the processes that did not move them."""
  ocp.multihost.sync_global_processes("llm_jax:restored")  # a no-op in a single process
  if bad and move_bad:
    _move_aside(manager, bad)
  ocp.multihost.sync_global_processes("llm_jax:moved_aside")
  if bad:
    manager.reload()


def _move_aside(manager: ocp.CheckpointManager, steps) -> None:
  root = os.path.join(os.path.dirname(manager.directory), CORRUPT_DIR)
  os.makedirs(root, exist_ok=True)
  for step in steps:
    dest = os.path.join(root, str(step))
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(os.path.join(manager.directory, str(step)), dest)
    print(f"llm-jax: warning: moved the damaged checkpoint of step {step} to {dest}",
          file=sys.stderr, flush=True)
