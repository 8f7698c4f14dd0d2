"""The code's layout: imports point down, the placements share one interface, and a run directory
keeps one config (training/workdir.py)."""

import ast
import inspect
import pathlib

import pytest

from llm_jax.config import default_config
from llm_jax.errors import UserError
from llm_jax.sweep import worker
from llm_jax.training import parallel, workdir as workdir_lib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llm_jax"
# what each lower folder may not import: the layers above it
ABOVE = {
    "training": ("llm_jax.tasks", "llm_jax.generate", "llm_jax.evaluate", "llm_jax.convert",
                 "llm_jax.sweep", "llm_jax.cli", "llm_jax.bench", "llm_jax.plot"),
    "models": ("llm_jax.training", "llm_jax.data", "llm_jax.decoding", "llm_jax.bench",
               "llm_jax.sweep", "llm_jax.cli"),
    "data": ("llm_jax.models", "llm_jax.training", "llm_jax.decoding", "llm_jax.sweep"),
}


def imported_modules(path: pathlib.Path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.ImportFrom) and node.module:
      out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
  return out


@pytest.mark.parametrize("folder", sorted(ABOVE))
def test_imports_point_down(folder):
  bad = [(path.name, m) for path in sorted((PACKAGE / folder).glob("*.py"))
         for m in sorted(imported_modules(path))
         if any(m == up or m.startswith(up + ".") for up in ABOVE[folder])]
  assert not bad


def test_the_placements_have_the_same_methods():
  def public(cls):
    return {n for n, v in inspect.getmembers(cls, callable) if not n.startswith("_")}
  protocol = {n for n in vars(parallel.Placement) if not n.startswith("_")}
  assert public(parallel.MeshPlacement) == public(parallel.PmapPlacement)
  assert public(parallel.MeshPlacement) <= protocol


def test_a_sweep_run_keeps_one_config_and_refuses_one_its_run_does_not_fit(tmp_path):
  config = default_config()
  worker.write_run(str(tmp_path), config)
  assert worker.RUN_FILE == workdir_lib.CONFIG_FILE
  assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lib.CONFIG_FILE]
  assert worker.read_run(str(tmp_path)).to_dict() == config.to_dict()
  config.train.max_steps += 1  # a longer schedule fits the run's checkpoints
  worker.write_run(str(tmp_path), config)
  assert workdir_lib.read_config(str(tmp_path)).train.max_steps == config.train.max_steps
  config.model.n_layer += 1  # another model does not
  with pytest.raises(UserError, match="config.model.n_layer"):
    worker.write_run(str(tmp_path), config)
  assert workdir_lib.read_config(str(tmp_path)).model.n_layer == config.model.n_layer - 1
