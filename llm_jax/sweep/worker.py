"""One unit of a sweep, in its own process: `python -m llm_jax.sweep.worker <workdir>...`.

Each workdir holds the resolved config the runner wrote (sweep_run.json). One workdir trains with
`train_and_evaluate`; several train together with `train_runs`. Either resumes what its
workdirs hold.
"""

import json
import os
import sys

import ml_collections

from llm_jax.config import with_defaults
from llm_jax.errors import UserError
from llm_jax.fileio import write_json
from llm_jax.training.signals import Interrupted

RUN_FILE = "sweep_run.json"


def write_run(workdir: str, config) -> None:
  write_json(os.path.join(workdir, RUN_FILE), config.to_dict())


def read_run(workdir: str) -> ml_collections.ConfigDict:
  """The run's config; fields added to the config since it was written take their defaults."""
  with open(os.path.join(workdir, RUN_FILE), encoding="utf-8") as f:
    return ml_collections.ConfigDict(with_defaults(json.load(f)))


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
