"""Data parallelism: one pure step function, two wrappers (jax.jit on one device, jax.pmap on all).

Global batch semantics: config.train.batch_size is the global micro-batch, across all devices of
all processes; each device gets batch_size / devices examples, and one update sees
batch_size x grad_accum_steps examples, whatever the device count. The global batch of a step is
drawn identically on every process (from (seed, step)); each process keeps its own slice of it and
splits that over its local devices. So 1 device and N devices compute the same mean loss and
gradient, up to the order of float additions.

Multi-host: `init_distributed` calls jax.distributed.initialize from config.distributed or the
environment (LLM_JAX_COORDINATOR_ADDRESS, LLM_JAX_NUM_PROCESSES, LLM_JAX_PROCESS_ID), or, inside
`srun` with several tasks and none of those given, from SLURM's environment (JAX's own cluster
detection), before JAX starts; on CPU the collectives go through gloo.
"""

import os

import jax
import numpy as np

from llm_jax.errors import UserError

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


# how the steps run, from config.parallel: 'jit' (on one device; config.parallel='none') or 'pmap'
# (a replica on every device)
MODES = {"none": "jit", "pmap": "pmap"}


def resolve(parallel: str) -> str:
  """config.parallel -> the mode: 'auto' is 'pmap' when there are several devices, else 'jit'."""
  if parallel == "auto":
    return "pmap" if jax.device_count() > 1 else "jit"
  return MODES[parallel]


def n_devices(mode: str) -> int:
  return jax.device_count() if mode == "pmap" else 1


def check_batch(batch_size: int, mode: str) -> None:
  d = n_devices(mode)
  if batch_size % d:
    raise UserError(f"config.train.batch_size={batch_size} does not divide by the {d} devices: "
                    f"use a multiple of {d} (it is the global batch across devices)")


def wrap_steps(train_step, evaluate, mode: str):
  """(train, evaluate), jitted or pmapped: train(state, batch, rng) -> (state, metrics) with the
  state donated; evaluate(state, batches) -> the mean loss over a stack of batches."""
  if mode == "pmap":
    return (jax.pmap(train_step, AXIS, in_axes=(0, 0, None), donate_argnums=0),
            jax.pmap(evaluate, AXIS))
  return jax.jit(train_step, donate_argnums=0), jax.jit(evaluate)


def place_state(state_host, mode: str):
  """Host (numpy) state -> on device: one copy, or a replica on each local device."""
  if mode == "pmap":  # pmap splits the leading axis over the local devices
    d = jax.local_device_count()
    return jax.tree.map(lambda x: np.broadcast_to(x, (d, *np.shape(x))).copy(), state_host)
  return jax.device_put(state_host)


def local_replica(tree, mode: str):
  """pmap: each leaf's copy on this process's first device, as a one-device array of shape
  (1, ...), read without a collective; else the tree as it is.

  A pmapped output is a global array over the devices of every process, and indexing it (`x[0]`)
  is a computation over all of them: each process would have to run it at the same point, and
  one that runs it where the others do not (under `if process_index() == 0`, or beside an
  Orbax barrier) waits forever. The local shard is a plain read."""
  if mode == "pmap":  # (a state not yet stepped is still place_state's numpy arrays)
    return jax.tree.map(lambda x: x.addressable_shards[0].data if isinstance(x, jax.Array)
                        else x[:1], tree)
  return tree


def host_state(state, mode: str):
  """The state as numpy arrays, one copy (what checkpoints hold, whatever the device count)."""
  state = jax.device_get(local_replica(state, mode))
  return jax.tree.map(lambda x: x[0], state) if mode == "pmap" else state


def shard_batch(batch: dict, mode: str, axis: int) -> dict:
  """A global batch -> this process's part, laid out for the wrapper.

  `axis` is the batch axis (1 for (A, B, ...) train batches and (E, B, ...) eval batches).
  pmap: this process's slice of B, split over its local devices: (D_local, A, B / D, ...).
  """
  if mode != "pmap":
    return batch
  d_local, p, n_proc = jax.local_device_count(), jax.process_index(), jax.process_count()

  def shard(x):
    b = x.shape[axis] // n_proc
    x = np.take(x, np.arange(p * b, (p + 1) * b), axis=axis)
    x = x.reshape(*x.shape[:axis], d_local, b // d_local, *x.shape[axis + 1:])
    return np.moveaxis(x, axis, 0)

  return {k: shard(v) for k, v in batch.items()}


def host_metrics(tree, mode: str):
  """Metrics of a pmapped step (identical on every device after pmean) -> one copy, on the host."""
  return host_state(tree, mode)
