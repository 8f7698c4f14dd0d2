"""The code's layout: imports point down with no circle anywhere, the placements share one
interface, and a run directory keeps one config (training/workdir.py)."""

import ast
import inspect
import pathlib

import pytest

from llm_jax.config import default_config
from llm_jax.errors import UserError
from llm_jax.sweep import worker
from llm_jax.training import parallel, workdir as workdir_lib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "llm_jax"

# what each part of llm_jax (a subpackage, or a top-level module) may import of the others: only
# the parts below it. The process entries (cli, __main__) may import anything.
ALLOWED = {
    "__init__": set(),
    "errors": set(),
    "fileio": {"errors"},
    "data": {"errors", "fileio"},
    "models": {"errors"},
    "peaks": {"errors", "fileio"},
    "decoding": {"errors", "fileio", "models"},
    "training": {"errors", "fileio", "data", "models", "decoding"},
    # RL (rl/: its loop, losses, tasks) stands on training as the sweep does, below config
    "rl": {"errors", "fileio", "data", "models", "decoding", "training"},
    "config": {"errors", "data", "models", "training", "rl"},
    "harness_scoring": {"errors"},
    "harness_lm": {"errors", "data", "decoding", "harness_scoring"},
    "harness": {"errors", "fileio", "models", "training", "config", "harness_scoring",
                "harness_lm"},
    "generate": {"errors", "fileio", "models", "decoding", "training", "config"},
    "chat": {"errors", "data", "decoding", "training", "generate"},
    "evaluate": {"errors", "training", "config"},
    "convert": {"errors", "fileio", "data", "models", "training", "config"},
    "plot": {"errors", "fileio"},
    "sweep": {"errors", "fileio", "peaks", "training", "config", "harness", "rl"},
    "bench": {"errors", "fileio", "models", "decoding", "training", "config", "peaks", "sweep"},
}
ENTRIES = ("cli", "__main__")
# imports that break the rule today, each with the issue that removes it
EXCEPTIONS = set()


def module_names(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Every module of the package under root: dotted name -> file (a package is its __init__)."""
  out = {}
  for path in sorted((root / package).rglob("*.py")):
    parts = path.relative_to(root).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def imports_of(path: pathlib.Path, name: str, modules) -> set[str]:
  """The package's modules that the module imports anywhere in its file (inside functions too):
  `from a import b` is a.b where that is a module, else a."""
  is_package = path.name == "__init__.py"
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package
        pkg = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in modules:  # import a.b.c of a module a.b: the module a.b
        t = t.rpartition(".")[0]
      if t and t != name:
        out.add(t)
  return out


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  modules = module_names(root, package)
  return {name: imports_of(path, name, modules) for name, path in modules.items()}


def part_of(module: str, package: str) -> str:
  rest = module.split(".")[1:]
  return rest[0] if rest else "__init__"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The import circles: the strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def layout_problems(root: pathlib.Path, package: str, allowed: dict, entries=(),
                    exceptions=frozenset()) -> list[str]:
  """Each import of a part it may not import (`allowed`), each part that `allowed` does not
  name, and each circle."""
  graph, problems = import_graph(root, package), []
  for module, targets in sorted(graph.items()):
    part = part_of(module, package)
    if part in entries:
      continue
    if part not in allowed:
      problems.append(f"{module}: a part the layout does not name")
      continue
    for t in sorted(targets):
      to = part_of(t, package)
      if to != part and to not in allowed[part] and (module, t) not in exceptions:
        problems.append(f"{module} imports {t}: {part} may import only {sorted(allowed[part])}")
  problems += [f"an import circle: {' -> '.join(c)}" for c in circles(graph)]
  return problems


def test_imports_point_down_and_form_no_circle():
  assert circles(ALLOWED) == []  # the parts themselves are in layers
  assert layout_problems(PACKAGE.parent, "llm_jax", ALLOWED, ENTRIES, EXCEPTIONS) == []


def function_lengths(path: pathlib.Path) -> dict[str, int]:
  """Each function's (and method's) lines, its decorators and docstring included."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  return {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_one_run_reads_top_to_bottom_in_one_file():
  """training/loop.py: one run, short functions, nothing of the vectorized runs (their layer,
  vectorized.py, wraps the loop's parts)."""
  path = PACKAGE / "training" / "loop.py"
  text = path.read_text(encoding="utf-8")
  assert len(text.splitlines()) <= 200
  assert max(function_lengths(path).values()) <= 80
  assert not any(word in text.lower() for word in ("vectoriz", "vmap", "several", "runs["))


def test_the_checker_finds_a_planted_upward_import_and_a_planted_circle(tmp_path):
  pkg = tmp_path / "pkg"
  for folder in ("low", "high"):
    (pkg / folder).mkdir(parents=True)
    (pkg / folder / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text("")
  (pkg / "low" / "a.py").write_text("import os\n")
  (pkg / "low" / "b.py").write_text("from pkg.low import a\n")
  (pkg / "high" / "c.py").write_text("from pkg.low.b import x\n")
  allowed = {"__init__": set(), "low": set(), "high": {"low"}}
  assert layout_problems(tmp_path, "pkg", allowed) == []
  # an upward import, inside a function
  (pkg / "low" / "a.py").write_text("def f():\n  from pkg.high import c\n")
  assert layout_problems(tmp_path, "pkg", allowed) == [
      "pkg.low.a imports pkg.high.c: low may import only []",
      "an import circle: pkg.high.c -> pkg.low.a -> pkg.low.b"]
  # a circle within one part (relative imports, as `from . import`)
  (pkg / "low" / "a.py").write_text("def f():\n  from . import b\n")
  assert layout_problems(tmp_path, "pkg", allowed) == [
      "an import circle: pkg.low.a -> pkg.low.b"]
  (pkg / "low" / "a.py").write_text("import pkg.other\n")  # a part the layout does not know
  (pkg / "other.py").write_text("")
  assert layout_problems(tmp_path, "pkg", allowed) == [
      "pkg.low.a imports pkg.other: low may import only []",
      "pkg.other: a part the layout does not name"]


# the process entries, where a process's own state is set: the command line, the sweep's worker
# process and its cluster job (submitit's)
PROCESS_ENTRIES = ("cli.py", "__main__.py", "sweep/worker.py", "sweep/cluster.py")
MUTATORS = ("update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__")


def _process_state(node) -> str | None:
  """'os.environ' or 'sys.modules' where node names one (as `os.environ` or `environ`)."""
  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
    name = f"{node.value.id}.{node.attr}"
    return name if name in ("os.environ", "sys.modules") else None
  if isinstance(node, ast.Name) and node.id == "environ":
    return "os.environ"
  return None


def process_state_writes(root: pathlib.Path) -> list[str]:
  """Each place a module under root (entries aside) sets os.environ or sys.modules: an item
  assigned or deleted, a mutating method, os.putenv or os.unsetenv."""
  out = []
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root).as_posix()
    if rel in PROCESS_ENTRIES:
      continue
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      targets = []
      if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        targets = [t.value for t in targets if isinstance(t, ast.Subscript)]
        targets += [t for t in (node.targets if isinstance(node, ast.Assign) else [])
                    if _process_state(t)]  # os.environ = {...}
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in MUTATORS:
          targets = [node.func.value]
        elif ast.unparse(node.func) in ("os.putenv", "os.unsetenv"):
          out.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}")
      out += [f"{rel}:{node.lineno} {_process_state(t)}" for t in targets if _process_state(t)]
  return out


def test_no_library_module_sets_the_process_environment_or_modules(tmp_path):
  assert process_state_writes(PACKAGE) == []
  planted = tmp_path / "lib.py"
  for line in ('os.environ["HF_HUB_OFFLINE"] = "1"', "sys.modules['torch'] = None",
               "del sys.modules['torch']", "os.environ.update(A='1')", "os.putenv('A', '1')",
               "environ.setdefault('A', '1')"):
    planted.write_text(f"import os, sys\nfrom os import environ\ndef f():\n  {line}\n")
    assert len(process_state_writes(tmp_path)) == 1, line
  planted.write_text("import os\nx = os.environ.get('A')\ny = dict(os.environ)\n")  # reads
  assert process_state_writes(tmp_path) == []


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
  saved = workdir_lib.read_config(str(tmp_path), default_config().to_dict())
  assert saved.train.max_steps == config.train.max_steps
  config.model.n_layer += 1  # another model does not
  with pytest.raises(UserError, match="config.model.n_layer"):
    worker.write_run(str(tmp_path), config)
  saved = workdir_lib.read_config(str(tmp_path), default_config().to_dict())
  assert saved.model.n_layer == config.model.n_layer - 1
