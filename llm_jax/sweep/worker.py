"""One unit of a sweep, in its own process: `python -m llm_jax.sweep.worker <workdir>...`.

Each workdir holds the resolved config the runner wrote (its config.json, the run's one copy).
One workdir trains with `loop.train_and_evaluate`, or, for an RL config (config.is_rl: it names
an rl.task), with `rl.loop.rl_train`, the loop of `llm-jax rl`; several train together with
`vectorized.train_runs`. Each resumes what its workdirs hold. The worker is the caller the
training loop expects: it validates the configs and lends the loop its hooks (`train_hooks`).
"""

import os
import sys

import ml_collections

from llm_jax.config import default_config, is_rl, validate
from llm_jax.errors import UserError
from llm_jax.training import workdir as workdir_lib
from llm_jax.training.signals import Interrupted

# the run's config, as training writes it too: one copy, one reader (workdir.read_config)
RUN_FILE = workdir_lib.CONFIG_FILE


def write_run(workdir: str, config) -> None:
  """The run's config.json, before its worker starts. A run already there must be the same run
  (workdir.check_same_run): its saved config is never replaced by one its checkpoints do not
  fit."""
  saved = workdir_lib.read_config(workdir, defaults()) if os.path.isdir(workdir) else None
  if saved is not None:
    if config.model.dtype == "auto":  # the dtype the run took when it started (peaks.py)
      config = config.copy_and_resolve_references()
      config.model.dtype = saved.model.dtype
    workdir_lib.check_same_run(config, saved)
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_config(workdir, config)


def read_run(workdir: str) -> ml_collections.ConfigDict:
  """The run's config; fields added to the config since it was written take their defaults."""
  config = workdir_lib.read_config(workdir, defaults())
  if config is None:
    raise UserError(f"{workdir} holds no {RUN_FILE}: start the run with `llm-jax sweep`")
  return config


def defaults() -> dict:
  """The config's defaults: the fields a run saved by an older version lacks read as these."""
  return default_config().to_dict()


def train_hooks():
  """What the training loop gets from above training (loop.Hooks): lm-eval's tasks at the
  evaluations (train.harness_tasks), the config's defaults, the precision 'auto' chooses."""
  from llm_jax import harness, peaks
  from llm_jax.training.loop import Hooks
  return Hooks(evaluations=harness.TrainingMetrics(), defaults=defaults(),
               fix_dtype=peaks.fix_run_dtype)


def train_run(config, workdir: str) -> dict:
  """One run of the sweep in its workdir, resumed: an RL config as `llm-jax rl` runs it, any
  other as `llm-jax train`. Returns the run's summary."""
  if is_rl(config):
    from llm_jax.rl.loop import rl_train
    return rl_train(config, workdir, defaults())
  from llm_jax.training.loop import train_and_evaluate
  return train_and_evaluate(config, workdir, train_hooks())


def main(workdirs) -> int:
  from llm_jax.training.parallel import enable_compilation_cache
  enable_compilation_cache()  # the runs of a sweep share their programs' compilations
  try:
    configs = [read_run(w) for w in workdirs]
    for c in configs:
      validate(c)
    if len(workdirs) == 1:
      train_run(configs[0], workdirs[0])
    else:
      from llm_jax.training.vectorized import train_runs
      train_runs(configs, workdirs, train_hooks())
  except UserError as e:
    print(f"llm-jax sweep worker: error: {e}", file=sys.stderr, flush=True)
    return 2
  except Interrupted as e:  # stopped by the sweep (SIGTERM) after saving: the next sweep resumes
    print(f"llm-jax sweep worker: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
