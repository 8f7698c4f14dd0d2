"""Files the project writes and reads back, one way each: data/, training/ and sweep/ use these.

- atomic_write / write_json: a file appears complete or not at all (a crash, a full disk or a
  concurrent writer never leaves half a file under the real name);
- read_utf8 / read_text_files: a UTF-8 file, or the files a glob matches joined in sorted order,
  with a leading byte-order mark dropped (it is not text);
- read_metrics: metrics.jsonl, whose last line may be torn by a run killed while writing it;
- load_python_file: a user's Python file (a config, an experiment), its errors on one line.
"""

import contextlib
import glob
import importlib.machinery
import importlib.util
import json
import os
import pathlib
import sys
import tempfile

from llm_jax.errors import UserError


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
  """`with atomic_write(path, "wb") as f:` writes a temporary file beside `path` and renames it
  to `path` when the block ends without an exception (else removes it). The parent folders are
  made; the file is readable by all (it may be a shared cache)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path, obj) -> None:
  """obj as indented JSON with sorted keys, atomically."""
  with atomic_write(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")


def read_utf8(path) -> str:
  """The text of a UTF-8 file, without a leading byte-order mark; a UserError naming the file if
  it is not UTF-8 or cannot be read."""
  try:
    return pathlib.Path(path).read_text(encoding="utf-8-sig")
  except UnicodeDecodeError as e:
    raise UserError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8") \
        from None
  except OSError as e:
    raise UserError(f"cannot read {path}: {e.strerror}") from None


def read_text_files(pattern: str, name: str) -> str:
  """The UTF-8 files `pattern` (a path or a glob, ~ expanded) matches, joined in sorted order.
  name: the flag or field that gave the pattern, for the error (such as 'config.data.path')."""
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise UserError(f"{name}={pattern} matches no file: pass a UTF-8 text file or a glob such as "
                    f"'books/*.txt'")
  return "".join(read_utf8(p) for p in paths)


# a run's metrics file in its workdir (training/workdir.py names the rest of the layout): here, so
# that the light commands (plot) read it without the training modules
METRICS_FILE = "metrics.jsonl"


def read_metrics(path) -> list[dict]:
  """The records of a metrics.jsonl (one JSON object with a 'step' a line; [] if there is no file).

  A last line that is not a record was torn by a run stopped while writing it: it is skipped with
  a warning. Any other such line is damage this project did not cause: a UserError naming the
  file and the line."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().split("\n")
  except FileNotFoundError:
    return []
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read {path} ({e}): restore it or delete it") from None
  while lines and not lines[-1].strip():
    lines.pop()
  records = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      r = json.loads(line)
      if not isinstance(r, dict) or not isinstance(r.get("step"), int):
        raise ValueError("no integer 'step'")
    except ValueError:
      if lineno == len(lines):
        print(f"llm-jax: warning: {path} line {lineno} is incomplete (a run stopped while "
              f"writing it): skipped", file=sys.stderr, flush=True)
        break
      raise UserError(f"{path} line {lineno} is not a metrics record: the file is damaged; "
                      f"delete that line") from None
    records.append(r)
  return records


def load_python_file(path, label: str, fix: str):
  """The module of a user's Python file. label names the file in errors (such as '--config=x.py');
  fix: what to pass instead when the file is missing. An error raised by the file is one line."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise UserError(f"{label} {'is not a file' if path.exists() else 'does not exist'}: {fix}")
  name = f"_llm_jax_{path.stem}"
  spec = importlib.util.spec_from_loader(name, importlib.machinery.SourceFileLoader(name, str(path)))
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 -- a user's file: its own error, on one line
    raise UserError(f"{label} failed to load: {type(e).__name__}: {e}") from None
  return module
