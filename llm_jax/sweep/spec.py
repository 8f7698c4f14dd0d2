"""An experiment is a folder with an `experiment.py` that declares its runs:

    from llm_jax.sweep import grid

    def get_experiment():
      return {
          # the config file every point starts from, relative to this folder
          "base": "../../configs/gpt_char_baby.py",
          # overrides every point shares (optional)
          "overrides": {"train.max_steps": 1000},
          # the points: a list of override dicts; grid() gives every combination of its values
          "points": grid({"model.norm": ["pre", "post"], "model.n_layer": [4, 8]}),
          # one run per point and seed, each in runs/<point>/seed<seed>
          "seeds": [0, 1, 2],
      }

A base config that names an rl.task (configs/rl_arithmetic.py) makes an RL experiment: each run
is an `llm-jax rl` run (config.is_rl), and the report reads its rewards; experiments/rl/ablation.

A point (or the shared overrides) may also ask for the processes each of its runs trains on under
`--launcher=submitit`: `"slurm.nodes": 2, "slurm.tasks_per_node": 4` (one run over 8 processes,
one per GPU; see parallel.init_distributed).

`load_experiment` expands and checks every run before any starts: an unknown field, a value of the
wrong type or an invalid config is one error naming the point and the field.
"""

import difflib
import itertools
import os
import re
from typing import NamedTuple

import ml_collections

from llm_jax.config import is_rl, run_steps, validate
from llm_jax.errors import UserError
from llm_jax.fileio import load_python_file
from llm_jax.training import workdir as workdir_lib

EXPERIMENT_FILE = "experiment.py"
KEYS = {"base", "overrides", "points", "seeds"}
# the fields of a point that are not config fields: the processes of each of its runs
RESOURCES = ("slurm.nodes", "slurm.tasks_per_node")


class Run(NamedTuple):
  point: str  # the point's name: its overrides, e.g. 'norm=post,n_layer=8'
  overrides: dict  # the point's own overrides (field -> value)
  seed: int
  config: ml_collections.ConfigDict  # resolved: base + shared overrides + point + seed
  workdir: str
  nodes: int = 1  # slurm.nodes: one run trains over nodes x tasks_per_node processes
  tasks_per_node: int = 1  # slurm.tasks_per_node


class Experiment(NamedTuple):
  name: str
  directory: str
  runs: list  # of Run, point-major
  points: list  # of (name, overrides), in declaration order


def grid(axes: dict) -> list[dict]:
  """{'model.norm': ['pre', 'post'], 'model.n_layer': [4, 8]} -> the 4 combinations, first axis
  slowest."""
  if not isinstance(axes, dict):
    raise UserError(f"grid() takes a dict {{field: [values, ...]}}, not a {type(axes).__name__} "
                    f"({axes!r:.80}): write grid({{'model.n_layer': [4, 8]}})")
  axes = dict(axes)
  for field, values in axes.items():
    try:  # a list, a tuple, a range, ...; a string would be its characters
      axes[field] = None if isinstance(values, (str, bytes, dict)) else list(values)
    except TypeError:
      axes[field] = None
    if not axes[field]:
      raise UserError(f"grid(): {field!r} takes a non-empty list of values, not {values!r:.80}: "
                      f"write grid({{{field!r}: [a, b]}})")
  fields = list(axes)
  return [dict(zip(fields, values)) for values in itertools.product(*axes.values())]


def set_field(config, field: str, value, where: str) -> None:
  """config.<field> = value, for a dotted field that must already exist, with its type."""
  *sections, leaf = field.split(".")
  node = config
  for i, name in enumerate(sections):
    if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
      raise UserError(f"{where}: {field!r} is not a config field ({'.'.join(sections[:i + 1])!r} "
                      f"is not a section): use one of {', '.join(sorted(node.keys()))}")
    node = node[name]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    prefix = field[:-len(leaf)]
    close = difflib.get_close_matches(leaf, sorted(node.keys()), n=1)
    raise UserError(f"{where}: {field!r} is not a config field: " +
                    (f"did you mean {prefix + close[0]!r}?" if close else
                     f"use one of {', '.join(prefix + k for k in sorted(node.keys()))}"))
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise UserError(f"{where}: {field}={value!r} has the wrong type: use a "
                    f"{type(node[leaf]).__name__} ({e})") from None


def point_name(overrides: dict, all_fields) -> str:
  """'norm=post,n_layer=8': each field by its last part, unless two points' fields share it."""
  leaves = [f.split(".")[-1] for f in all_fields]
  short = {f: f.split(".")[-1] if leaves.count(f.split(".")[-1]) == 1 else f for f in all_fields}
  name = ",".join(f"{short[f]}={v}" for f, v in overrides.items()) or "base"
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def load_experiment(directory: str) -> Experiment:
  directory = os.path.abspath(directory.rstrip("/"))
  path = os.path.join(directory, EXPERIMENT_FILE)
  module = load_python_file(path, path,
                            f"an experiment folder holds {EXPERIMENT_FILE} with get_experiment()")
  if not hasattr(module, "get_experiment"):
    raise UserError(f"{path} has no get_experiment(): define one returning a dict with "
                    f"{', '.join(sorted(KEYS))}")
  spec = module.get_experiment()
  unknown = set(spec) - KEYS
  if unknown or "base" not in spec:
    raise UserError(f"{path}: get_experiment() returns keys {sorted(spec)}: use {sorted(KEYS)} "
                    "('base' is required)")
  base_path = os.path.normpath(os.path.join(directory, spec["base"]))
  base_module = load_python_file(base_path, base_path, f"fix 'base' in {path}")
  for key in ("points", "seeds"):  # given, but empty: no run at all, rather than a default one
    if key not in spec:
      continue
    try:  # a list, a tuple, a range, ...
      items = None if isinstance(spec[key], (str, bytes, dict)) else list(spec[key])
    except TypeError:
      items = None
    if items:
      spec = {**spec, key: items}
    else:
      raise UserError(f"{path}: {key}={spec[key]!r}: give a non-empty list (or leave '{key}' "
                      f"out: " + ("one point, the base config)" if key == "points" else
                                  "seed 0)"))
  points = spec.get("points") or [{}]
  if not all(isinstance(p, dict) for p in points):
    raise UserError(f"{path}: points: each point is a dict of overrides {{field: value}}; "
                    f"grid({{...}}) gives a list of them")
  seeds = list(spec.get("seeds") or [0])
  if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
    raise UserError(f"{path}: seeds={seeds!r}: use distinct integers")
  fields = list(dict.fromkeys(f for p in points for f in p))
  names = [point_name(p, fields) for p in points]
  if len(set(names)) != len(names):
    raise UserError(f"{path}: two points have the same overrides ({names}): remove the duplicate")

  runs = []
  for name, overrides in zip(names, points):
    for seed in seeds:
      where = f"{path}: point {name}, seed {seed}"
      config = base_module.get_config()
      resources = {"nodes": 1, "tasks_per_node": 1}
      for field, value in {**spec.get("overrides", {}), **overrides, "seed": seed}.items():
        if field.startswith("slurm."):
          if field not in RESOURCES or not isinstance(value, int) or value < 1:
            raise UserError(f"{where}: {field}={value!r} is invalid: use "
                            f"{' or '.join(RESOURCES)}, a positive integer")
          resources[field.removeprefix("slurm.")] = value
        else:
          set_field(config, field, value, where)
      try:
        validate(config)
      except UserError as e:
        raise UserError(f"{where}: {e}") from None
      runs.append(Run(name, overrides, seed, config,
                      os.path.join(directory, "runs", name, f"seed{seed}"), **resources))
  kinds = {is_rl(r.config): r.point for r in runs}
  if len(kinds) > 1:
    raise UserError(f"{path}: point {kinds[True]} is an RL run (it names an rl.task) and point "
                    f"{kinds[False]} is not: an experiment runs one kind; set rl.task in both or "
                    f"in neither")
  return Experiment(os.path.basename(directory), directory, runs, list(zip(names, points)))


def is_finished(run: Run) -> bool:
  """The run directory's rule (training/workdir.py): summary.json reports the last step (an RL
  run's counts its rl.sft_steps too)."""
  return workdir_lib.is_finished(run.workdir, run_steps(run.config))


def is_rl_experiment(exp: Experiment) -> bool:
  """Its runs are `llm-jax rl` runs (load_experiment has checked that all or none are)."""
  return is_rl(exp.runs[0].config)
