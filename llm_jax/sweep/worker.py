"""One unit of a sweep, in its own process: `python -m llm_jax.sweep.worker <workdir>...`.

Each workdir holds the resolved config the runner wrote (its config.json, the run's one copy).
One workdir trains with `train_and_evaluate`; several train together with `train_runs`. Either
resumes what its workdirs hold.
"""

import os
import sys

import ml_collections

from llm_jax.errors import UserError
from llm_jax.training import workdir as workdir_lib
from llm_jax.training.signals import Interrupted

# the run's config, as training writes it too: one copy, one reader (workdir.read_config)
RUN_FILE = workdir_lib.CONFIG_FILE


def write_run(workdir: str, config) -> None:
  """The run's config.json, before its worker starts. A run already there must be the same run
  (workdir.check_same_run): its saved config is never replaced by one its checkpoints do not
  fit."""
  saved = workdir_lib.read_config(workdir) if os.path.isdir(workdir) else None
  if saved is not None:
    if config.model.dtype == "auto":  # the dtype the run took when it started (peaks.py)
      config = config.copy_and_resolve_references()
      config.model.dtype = saved.model.dtype
    workdir_lib.check_same_run(config, saved)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_config(workdir, config)


def read_run(workdir: str) -> ml_collections.ConfigDict:
  """The run's config; fields added to the config since it was written take their defaults."""
  config = workdir_lib.read_config(workdir)
  if config is None:
    raise UserError(f"{workdir} holds no {RUN_FILE}: start the run with `llm-jax sweep`")
  return config


def main(workdirs) -> int:
  configs = [read_run(w) for w in workdirs]
  from llm_jax.training.parallel import enable_compilation_cache
  enable_compilation_cache()  # the runs of a sweep share their programs' compilations
  try:
    if len(workdirs) == 1:
      from llm_jax.training.loop import train_and_evaluate
      train_and_evaluate(configs[0], workdirs[0])
    else:
      from llm_jax.training.loop import train_runs
      train_runs(configs, workdirs)
  except UserError as e:
    print(f"llm-jax sweep worker: error: {e}", file=sys.stderr, flush=True)
    return 2
  except Interrupted as e:  # stopped by the sweep (SIGTERM) after saving: the next sweep resumes
    print(f"llm-jax sweep worker: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
