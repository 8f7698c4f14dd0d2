"""What a run keeps beside its checkpoints: the resolved config and the tokenizer, as JSON.

A workdir holds one run. Launching again with the same workdir resumes it; a config whose model
or data differ from the saved one is refused (it would not fit the checkpoints).
"""

import json
import os

import ml_collections

from llm_jax.data.tokenizers import tokenizer_from_dict
from llm_jax.errors import UserError

CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"


def _read_json(workdir, name):
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is unreadable ({e}): restore it or use a fresh --workdir") from None


def _write_json(workdir, name, obj):
  path = os.path.join(workdir, name)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def read_config(workdir) -> ml_collections.ConfigDict | None:
  d = _read_json(workdir, CONFIG_FILE)
  return None if d is None else ml_collections.ConfigDict(d)


def read_tokenizer(workdir):
  d = _read_json(workdir, TOKENIZER_FILE)
  return None if d is None else tokenizer_from_dict(d)


def check_same_run(config, saved) -> None:
  """The parts of a config that checkpoints depend on must match the run saved in the workdir."""
  fields = [f"model.{k}" for k in sorted(set(config.model) | set(saved.model))]
  for field in fields + ["data.corpus", "data.tokenizer", "data.task"]:
    section, key = field.split(".")
    new, old = config[section].get(key), saved[section].get(key)
    if new != old:
      raise UserError(f"config.{field}={new!r} differs from this workdir's run ({old!r}): use a "
                      f"fresh --workdir, or the run's own config (its config.json)")


def write_run_files(workdir, config, tokenizer) -> None:
  _write_json(workdir, CONFIG_FILE, config.to_dict())
  _write_json(workdir, TOKENIZER_FILE, tokenizer.to_dict())
