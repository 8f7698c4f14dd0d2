"""Where the train state and the batches live, and the one pure step that runs there.

config.parallel:
  'auto'  jax.jit over a device mesh of every device of every process (sharding.py): data
          parallel, FSDP and tensor parallel as config.mesh says (default: all on `data`). The
          state is created sharded (jit with out_shardings, never whole on one device), donated
          to each step, and checkpointed as it is, each process writing its own shards.
  'none'  the same on one device (the mesh of the first device).
  'pmap'  jax.pmap data parallelism: a replica of the state on every device, gradients averaged
          with lax.pmean (steps.py); checkpoints hold one host copy.
Both are a `Placement` (MeshPlacement, PmapPlacement) with the same methods, so the training loop
and the benchmark never test the mode.

Global batch semantics: config.train.batch_size is the global micro-batch, across all devices of
all processes; one update sees batch_size x grad_accum_steps examples, whatever the device count.
The global batch of a step is drawn identically on every process (from (seed, step)), and each
process transfers only the rows its own devices hold. So 1 device and N devices compute the same
mean loss and gradient, up to the order of float additions (and under the mesh, the same dropout
masks: JAX's partitionable threefry draws the same bits however an array is split).

Multi-host: `init_distributed` calls jax.distributed.initialize from config.distributed or the
environment (LLM_JAX_COORDINATOR_ADDRESS, LLM_JAX_NUM_PROCESSES, LLM_JAX_PROCESS_ID), or, inside
`srun` with several tasks and none of those given, from SLURM's environment (JAX's own cluster
detection), before JAX starts; on CPU the collectives go through gloo.
"""

import contextlib
import os
from typing import Callable, Protocol

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from llm_jax.errors import UserError
from llm_jax.models import axes, init_params
from llm_jax.training import sharding
from llm_jax.training.steps import create_state

AXIS = "batch"


# what srun sets in each task's environment, as JAX's SLURM detection reads it
SLURM_TASK_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")


def init_distributed(cfg) -> None:
  """cfg: config.distributed. Starts jax.distributed when more than one process is asked for,
  explicitly or by srun (a job step of several tasks)."""
  address = os.environ.get("LLM_JAX_COORDINATOR_ADDRESS", cfg.coordinator_address)
  n = int(os.environ.get("LLM_JAX_NUM_PROCESSES", cfg.num_processes))
  pid = int(os.environ.get("LLM_JAX_PROCESS_ID", cfg.process_id))
  srun = (n <= 1 and all(v in os.environ for v in SLURM_TASK_VARS)
          and int(os.environ["SLURM_NTASKS"]) > 1)
  if n <= 1 and not srun:
    return
  if not srun and not address:
    raise UserError(f"config.distributed.num_processes={n} needs a coordinator: pass "
                    f"--config.distributed.coordinator_address=host:port")
  if not srun and not 0 <= pid < n:
    raise UserError(f"config.distributed.process_id={pid} is invalid: use 0..{n - 1}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # no persistent compilation cache across processes: it was turned off when 2 processes on one
  # machine hung in a collective, a hang since traced to x[0] reads of global arrays (see
  # local_replica) and seen no more with the cache after that fix; off until shown safe for longer
  jax.config.update("jax_enable_compilation_cache", False)
  if srun:
    # JAX reads the task count and index (SLURM_NTASKS, SLURM_PROCID) and the coordinator (the
    # step's first node, a port from the job id). It assumes one task per GPU, each seeing every
    # GPU of its node, and gives task i GPU SLURM_LOCALID; JAX_LOCAL_DEVICE_IDS sets another layout
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=pid)


def first_stop_signal(signum: int | None) -> int | None:
  """The stop signal that any process has received (None: none), the same answer on every
  process. With several processes it is a collective, so each calls it at the same step: then
  all stop and save at the same step (one that saved, an Orbax barrier, while another ran the
  next step, a collective, would wait forever)."""
  if jax.process_count() == 1:
    return signum
  from jax.experimental import multihost_utils
  seen = multihost_utils.process_allgather(np.int32(signum or 0))  # (processes,)
  return int(seen.max()) or None


def enable_compilation_cache(path: str | None = None) -> str | None:
  """JAX's persistent compilation cache, so a second run of the same program loads it instead of
  compiling it again. The directory: `path`, else $JAX_COMPILATION_CACHE_DIR (JAX reads it
  itself), else $LLM_JAX_COMPILATION_CACHE, else ~/.cache/llm_jax/xla; 'off' leaves it off.
  Returns the directory in use (None when off). Call it before the first compilation."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") and path is None:
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  path = path or os.environ.get("LLM_JAX_COMPILATION_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "llm_jax", "xla")
  if path == "off":
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # cache every program that took over half a second to compile (the steps, not tiny helpers)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def set_cpu_devices(config) -> int | None:
  """Before JAX starts: config.cpu_devices host devices (0: one per core if the batch divides by
  the core count). Returns the count set, or None where it is not ours to set: parallel='none',
  a device count already in XLA_FLAGS, or JAX already running (a library caller's own set-up)."""
  if config.parallel == "none" or "host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return None
  n = config.cpu_devices or os.cpu_count() or 1
  if not config.cpu_devices and config.train.batch_size % n:
    n = 1
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already initialized
    return None
  return n


# config.parallel -> the mode: 'mesh' (jit over a device mesh), 'jit' (the mesh of one device),
# 'pmap' (a replica on every device)
MODES = {"auto": "mesh", "none": "jit", "pmap": "pmap"}


class Placement(Protocol):
  """Where the train state and the batches live, and how the steps run there (module docstring):
  MeshPlacement or PmapPlacement, which the loop and the benchmark use alike."""
  axis_name: str | None  # the steps' collective axis (pmap's); None: the compiler's (the mesh)
  n_devices: int
  batch_divisor: int  # the global batch is split over this many devices
  description: str  # for the start-of-run line

  def create_state(self, fn, *host_params):
    """fn(*params) -> the train state, placed; host_params: parameter trees fn takes."""

  def steps(self, train_step, evaluate, rng) -> tuple[Callable, Callable]:
    """(train(state, batch) -> (state, metrics), evaluate(state, batches) -> the mean loss)."""

  def replicated_fn(self, fn) -> Callable:
    """fn over the state (or part of it) -> a result every device holds, e.g. a norm."""

  def put_batch(self, batch: dict) -> dict:
    """A global host batch (the same on every process) -> this process's part, placed."""

  def local(self, tree):
    """A replicated result -> numpy, without a collective."""

  def to_host(self, tree):
    """The whole tree as numpy arrays (with several processes a collective: all call it)."""

  def saveable(self, state):
    """The state as Orbax saves it."""

  def place(self, state):
    """A restored state -> placed as create_state places it."""

  def memory(self, train, state, batch) -> dict:
    """The state's bytes per device (and the compiled step's, where XLA tells them)."""


def placement(config, model, tx, lead: int = 0) -> Placement:
  """The Placement for config.parallel and config.mesh of the train state of (model, tx);
  `lead`: leading axes stacked before the state's own (the vectorized runs' K), replicated."""
  mode = MODES[config.parallel]
  default_mesh = all(config.mesh[a] == d for a, d in zip(sharding.MESH_AXES, (-1, 1, 1, 1)))
  if mode != "mesh" and not default_mesh:
    fields = " ".join(f"--config.mesh.{a}={config.mesh[a]}" for a in sharding.MESH_AXES)
    raise UserError(f"{fields} needs the mesh: use --config.parallel=auto (it is "
                    f"{config.parallel!r}), or leave config.mesh as it is")
  if mode == "pmap" and lead:
    raise UserError("vectorized runs (llm-jax sweep --vectorize) train on the mesh: use "
                    "--config.parallel=auto or none (it is 'pmap')")
  if mode == "pmap":
    p = PmapPlacement()
  else:
    devices = jax.devices() if mode == "mesh" else jax.local_devices()[:1]
    mesh = sharding.make_mesh(config.mesh, devices)
    description = "jit" if mode == "jit" else "mesh " + " ".join(
        f"{a}={n}" for a, n in mesh.shape.items() if a != "expert" or n > 1)  # (MoE's axis)
    p = MeshPlacement(mesh, model, config.model, tx, lead, description)
  b, d = config.train.batch_size, p.batch_divisor
  if b % d:
    raise UserError(f"config.train.batch_size={b} does not divide by the {d} devices it is split "
                    f"over ({p.description}): use a multiple of {d} (it is the global batch "
                    f"across devices)")
  return p


def _reader(x):
  """index -> x[index] as numpy: a lazy batch (`lazy_rows`, data/prepared.py) reads only the
  rows asked for, so each process reads the rows its own devices hold."""
  if getattr(x, "lazy_rows", False):
    return lambda i: np.asarray(x[i])
  return lambda i: np.asarray(x)[i]


class MeshPlacement:
  """jit over a mesh; see the module docstring."""

  def __init__(self, mesh, model, model_config, tx, lead: int, description: str):
    self.mesh, self.lead, self.description = mesh, (None,) * lead, description
    self.axis_name = None  # the steps' collectives are GSPMD's
    self.batch_axis = 1 + lead  # of a batch (..., A or E, B, ...)
    self.n_devices = mesh.size
    self.batch_divisor = int(np.prod([mesh.shape[a] for a in sharding.BATCH]))
    # the model traced once, abstractly: its parameters' shapes and axes' names, then the state's
    boxed = jax.eval_shape(lambda: init_params(model, model_config, jax.random.key(0), boxed=True))
    self.params_sharding = sharding.param_shardings(boxed, mesh, self.lead)
    abstract = jax.eval_shape(lambda p: create_state(p, tx), nn.unbox(boxed))
    self.state_sharding = sharding.state_shardings(abstract, self.params_sharding, tx, mesh,
                                                   self.lead)
    self.replicated = NamedSharding(mesh, P())

  @contextlib.contextmanager
  def _context(self):
    """The models' activation constraints (models/axes.py) by RULES, while a step is traced."""
    with axes.sharded_by(lambda names, shape: NamedSharding(
        self.mesh, sharding.spec_for(names, shape, self.mesh))):
      yield

  def _jit(self, fn, in_shardings, out_shardings, donate_argnums=()):
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     donate_argnums=donate_argnums)

    def call(*args):
      with self._context():
        return jitted(*args)
    call.lower = lambda *args: self._lower(jitted, *args)
    return call

  def _lower(self, jitted, *args):
    with self._context():
      return jitted.lower(*args)

  def create_state(self, fn, *host_params):
    """fn(*params) -> the train state, computed on the mesh straight into its shardings;
    host_params: parameter trees (e.g. a fine-tuning's source), placed as the parameters."""
    args = [self._put(p, self.params_sharding) for p in host_params]
    return jax.jit(fn, out_shardings=self.state_sharding)(*args)

  def _put(self, tree, shardings):
    """Host arrays (the same on every process) -> global arrays at `shardings`; each process
    transfers its own shards (an array already there stays)."""
    return jax.tree.map(
        lambda x, s: x if isinstance(x, jax.Array) and x.sharding == s else
        jax.make_array_from_callback(np.shape(x), s, _reader(x)), tree, shardings)

  def steps(self, train_step, evaluate, rng):
    """(train(state, batch) -> (state, metrics), the state donated; evaluate(state, batches) ->
    the mean loss), both over the mesh; rng: the run's dropout key."""
    batch = sharding.batch_sharding(self.mesh, self.batch_axis)
    key_data = np.asarray(jax.random.key_data(rng))  # a constant of the program, on no device
    step = lambda state, b: train_step(state, b, jax.random.wrap_key_data(key_data))
    train = self._jit(step,
                     (self.state_sharding, batch), (self.state_sharding, self.replicated), 0)
    ev = self._jit(evaluate, (self.state_sharding, batch), self.replicated)
    return train, ev

  def replicated_fn(self, fn):
    """fn over the state (or part of it) -> a replicated result, e.g. the parameters' norm."""
    return jax.jit(fn, out_shardings=self.replicated)

  def put_batch(self, batch: dict) -> dict:
    """A global host batch (the same on every process) -> global arrays split over (data, fsdp)
    along its batch axis; each process transfers only the rows its devices hold."""
    s = sharding.batch_sharding(self.mesh, self.batch_axis)
    return self._put(batch, {k: s for k in batch})

  def local(self, tree):
    """A replicated result (metrics, a norm) -> numpy, read from this process's first shard,
    without a collective."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def to_host(self, tree):
    """The whole tree as numpy arrays. With several processes a collective: all call it."""
    if jax.process_count() == 1:
      return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)

  def saveable(self, state):
    return state  # Orbax writes the shards where they are

  def place(self, state):
    """A restored state -> on the mesh (one restored into its shardings already is)."""
    return self._put(state, self.state_sharding)

  def memory(self, train, state, batch) -> dict:
    """Per device: the state's bytes (and one whole copy's), and the compiled step's (XLA's
    memory_analysis)."""
    return {"unsharded_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)),
            "state_bytes_per_device": sharding.per_device_bytes(state),
            **_compiled_memory(train.lower(state, batch))}


class PmapPlacement:
  """jax.pmap data parallelism over every device; the state a host copy between uses."""
  description = "pmap"
  axis_name = AXIS  # the steps average gradients and metrics over it (steps.py)

  def __init__(self):
    self.n_devices = self.batch_divisor = jax.device_count()

  def create_state(self, fn, *host_params):
    return self.place(jax.device_get(jax.jit(fn)(*host_params)))

  def steps(self, train_step, evaluate, rng):
    train = jax.pmap(train_step, AXIS, in_axes=(0, 0, None), donate_argnums=0)
    return (lambda state, b: train(state, b, rng)), jax.pmap(evaluate, AXIS)

  def replicated_fn(self, fn):
    return jax.pmap(fn, AXIS)

  def place(self, state_host):
    """Host (numpy) state -> a replica on each local device (pmap splits the leading axis)."""
    d = jax.local_device_count()
    return jax.tree.map(lambda x: np.broadcast_to(x, (d, *np.shape(x))).copy(), state_host)

  def put_batch(self, batch: dict) -> dict:
    """This process's slice of the batch axis (after the micro-batch axis), split over its local
    devices: (D_local, A, B / D, ...)."""
    axis = 1
    d_local, p, n_proc = jax.local_device_count(), jax.process_index(), jax.process_count()

    def shard(x):
      b = x.shape[axis] // n_proc
      x = np.take(x, np.arange(p * b, (p + 1) * b), axis=axis)
      x = x.reshape(*x.shape[:axis], d_local, b // d_local, *x.shape[axis + 1:])
      return np.moveaxis(x, axis, 0)

    return {k: shard(v) for k, v in batch.items()}

  def _replica(self, tree):
    """Each leaf's copy on this process's first device, (1, ...), read without a collective.

    A pmapped output is a global array over the devices of every process, and indexing it (`x[0]`)
    is a computation over all of them: each process would have to run it at the same point, and
    one that runs it where the others do not (under `if process_index() == 0`, or beside an
    Orbax barrier) waits forever. The local shard is a plain read."""
    return jax.tree.map(lambda x: x.addressable_shards[0].data if isinstance(x, jax.Array)
                        else x[:1], tree)  # (a state not yet stepped is place's numpy arrays)

  def local(self, tree):
    # (np.asarray again: a 0-d array, not a numpy scalar, which Orbax does not take)
    return jax.tree.map(lambda x: np.asarray(np.asarray(x)[0]), jax.device_get(self._replica(tree)))

  to_host = saveable = local

  def memory(self, train, state, batch) -> dict:
    replica = sum(np.asarray(x[0]).nbytes for x in jax.tree.leaves(self._replica(state)))
    return {"unsharded_bytes": replica, "state_bytes_per_device": replica}


def _compiled_memory(lowered) -> dict:
  m = lowered.compile().memory_analysis()
  if m is None:
    return {}
  return {k: int(getattr(m, f"{k}_in_bytes")) for k in
          ("argument_size", "output_size", "temp_size", "generated_code_size")}
