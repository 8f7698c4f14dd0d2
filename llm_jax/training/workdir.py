"""A run directory's layout, owned here: what a run keeps beside its checkpoints (the resolved
config and the tokenizer, as JSON; metrics.jsonl; summary.json), the checkpoints' metadata, when a
run is finished, and `load_run` (a run's parameters, for generation, evaluation, export and
fine-tuning).

A workdir holds one run. Launching again with the same workdir resumes it; a config whose model
or data differ from the saved one is refused (it would not fit the checkpoints). Before training,
the workdir must be writable and its disk must hold two checkpoints (one written while the previous
one stays intact): a clear error at start rather than a failed save hours later.
"""

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np

from llm_jax.data.tokenizers import tokenizer_from_dict
from llm_jax.errors import UserError
from llm_jax.fileio import METRICS_FILE, write_json  # noqa: F401 -- the layout's names
from llm_jax.models import build_model, init_params
from llm_jax.training import checkpoint

CONFIG_FILE, TOKENIZER_FILE = "config.json", "tokenizer.json"
# METRICS_FILE (fileio.py, which reads it): one JSON record a line, the train metrics at each log
# step and the losses at each evaluation
# the run's summary, written when it reaches train.max_steps
SUMMARY_FILE = "summary.json"
# a converted checkpoint's Hugging Face config.json, kept for export and lm-eval (convert.py)
HF_CONFIG_FILE = "hf_config.json"


def _read_json(workdir, name):
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is unreadable ({e}): restore it or use a fresh --workdir") from None


def with_defaults(d: dict, defaults: dict) -> dict:
  """A config dict written by an older version (a run's JSON) with the fields it lacks at their
  `defaults`, so it validates and compares like a config made now."""
  out = dict(d)
  for k, v in defaults.items():
    out[k] = with_defaults(d.get(k, {}), v) if isinstance(v, dict) else d.get(k, v)
  return out


def read_config(workdir, defaults: dict | None) -> ml_collections.ConfigDict | None:
  """The run's config. `defaults`: the config's defaults as a dict (config.default_config(), which
  the caller passes: training never imports the config); the fields added to the config since the
  run was saved read as theirs. None: the saved fields alone."""
  d = _read_json(workdir, CONFIG_FILE)
  if d is None:
    return None
  return ml_collections.ConfigDict(with_defaults(d, defaults) if defaults is not None else d)


def read_tokenizer(workdir):
  d = _read_json(workdir, TOKENIZER_FILE)
  return None if d is None else tokenizer_from_dict(d)


def check_same_run(config, saved) -> None:
  """The parts of a config that checkpoints depend on must match the run saved in the workdir."""
  fields = [f"model.{k}" for k in sorted(set(config.model) | set(saved.model))]
  for field in fields + ["data.corpus", "data.tokenizer", "data.normalize", "data.task"]:
    section, key = field.split(".")
    new, old = config[section].get(key), saved[section].get(key)
    if new != old:
      raise UserError(f"config.{field}={new!r} differs from this workdir's run ({old!r}): use a "
                      f"fresh --workdir, or the run's own config (its config.json)")
  # the optimizer's state is in the checkpoints: another optimizer (or clipping, a link of the
  # chain) cannot resume from it
  new, old = config.train.optimizer, saved.train.optimizer
  clip_new, clip_old = config.train.grad_clip > 0, saved.train.grad_clip > 0
  if new != old or clip_new != clip_old:
    what = (f"config.train.optimizer={new!r}: the run was trained with optimizer {old!r}"
            if new != old else f"config.train.grad_clip={config.train.grad_clip!r}: the run was "
            f"trained with grad_clip={saved.train.grad_clip!r}")
    raise UserError(f"{what}, whose state its checkpoints hold: resume it as it was trained (its "
                    f"config.json), or start a fresh --workdir (train.init_from=<this workdir> "
                    f"fine-tunes its parameters with a new optimizer)")


def changed_fields(config, saved) -> list[str]:
  """The dotted names of the fields whose values differ between config and the saved run's
  (compared as JSON writes them: a tuple equals its list)."""
  def flat(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from flat(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v
  new = dict(flat(json.loads(json.dumps(config.to_dict()))))
  old = dict(flat(json.loads(json.dumps(saved.to_dict()))))
  return sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))


def write_config(workdir, config) -> None:
  write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())


def write_run_files(workdir, config, tokenizer) -> None:
  write_config(workdir, config)
  write_json(os.path.join(workdir, TOKENIZER_FILE), tokenizer.to_dict())


def _holds_work(path) -> bool:
  """A checkpoint step or a metrics record: training that ran, which a failure leaves in place."""
  checkpoints = os.path.join(path, "checkpoints")
  if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
    return True
  metrics = os.path.join(path, METRICS_FILE)
  return os.path.isfile(metrics) and os.path.getsize(metrics) > 0


@contextlib.contextmanager
def removed_if_failed(path, keep_work: bool = True):
  """For a command that creates the folder `path` (and the missing folders above it): if it
  fails, what it created is removed again, unless (keep_work) training ran there. A folder that
  existed before is never touched."""
  top = os.path.abspath(path)
  while not os.path.lexists(os.path.dirname(top)) and os.path.dirname(top) != top:
    top = os.path.dirname(top)
  new = not os.path.lexists(top)
  try:
    yield
  except BaseException:
    if new and os.path.isdir(top) and not (keep_work and _holds_work(os.path.abspath(path))):
      shutil.rmtree(top, ignore_errors=True)
    raise


def checkpoint_meta(best_val_loss: float = math.inf, skipped_updates: int = 0) -> dict:
  """The JSON saved beside each checkpoint's state, and restored with it."""
  return {"best_val_loss": best_val_loss, "skipped_updates": skipped_updates}


def read_summary(workdir) -> dict | None:
  """summary.json, or None where the run has none (not finished, or unreadable)."""
  try:
    with open(os.path.join(workdir, SUMMARY_FILE), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_finished(workdir, max_steps: int) -> bool:
  """A run is finished when its summary.json reports its last step."""
  summary = read_summary(workdir)
  return summary is not None and summary.get("step") == max_steps


def check_writable(workdir) -> None:
  """Creates workdir if needed and writes a file there; any failure is a UserError naming it."""
  if os.path.isfile(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a run directory: pick a directory (a new "
                    f"one is made)")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test."):
      pass
  except OSError as e:
    raise UserError(f"--workdir={workdir} is not writable ({e.strerror or e}): pick a directory "
                    f"you can write to") from None


def check_free_space(workdir, checkpoint_bytes: int) -> None:
  """Room for two checkpoints of checkpoint_bytes each, or a UserError."""
  free = shutil.disk_usage(workdir).free
  if free < 2 * checkpoint_bytes:
    raise UserError(f"--workdir={workdir} has {free / 2**20:.1f} MiB free, less than two "
                    f"checkpoints ({2 * checkpoint_bytes / 2**20:.1f} MiB): free some space or use "
                    f"another --workdir")


def os_error_in(e: BaseException) -> OSError | None:
  """The OSError behind e (itself, or along its causes: Orbax wraps its thread's errors)."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def describe_os_error(e: OSError) -> str:
  if e.errno == errno.ENOSPC:
    return "the disk is full"
  return e.strerror or str(e)


# a prepared dataset's identity (data/prepared.py), kept so a resumed run reads the same data
DATA_FILE = "data.json"


def check_same_data(workdir, identity: dict | None) -> None:
  """A run resumed on another prepared dataset (other shards or tokenizer) is refused."""
  saved = _read_json(workdir, DATA_FILE)
  if identity is None or saved is None or saved.get("identity") == identity["identity"]:
    return
  raise UserError(f"the prepared dataset at {identity['path']} is not the one this run started "
                  f"on ({saved.get('path')}, other shards or tokenizer): resume on that dataset, "
                  f"or use a fresh --workdir")


def write_data_identity(workdir, identity: dict | None) -> None:
  if identity is not None:
    write_json(os.path.join(workdir, DATA_FILE), identity)


def load_run(workdir: str, step: int | None = None, defaults: dict | None = None):
  """(config, tokenizer, model, params, step) of the run in workdir, at `step` (default: latest).
  defaults: as read_config's."""
  workdir = os.path.abspath(workdir)
  if os.path.isfile(workdir):
    raise UserError(f"--workdir={workdir} is a file, not a run directory: pass the directory of a "
                    f"training run (the --workdir it trained in)")
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} does not exist: pass the directory of a training run")
  config, tokenizer = read_config(workdir, defaults), read_tokenizer(workdir)
  if config is None or tokenizer is None:
    raise UserError(f"--workdir={workdir} holds no training run (no config.json/tokenizer.json): "
                    f"train one there with `llm-jax train`")
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints, create=False)
  steps = sorted(manager.all_steps()) if os.path.isdir(manager.directory) else []
  if not steps:
    raise UserError(f"--workdir={workdir} has no checkpoint yet: train it first")
  if step is not None and step not in steps:
    raise UserError(f"--step={step} was not saved in {workdir}: saved steps are "
                    f"{', '.join(map(str, steps))}")
  # a tokenizer with padding (the seq2seq one) names it; the others have none
  model = build_model(config.model, tokenizer.vocab_size, getattr(tokenizer, "PAD", 0))
  shapes = jax.eval_shape(lambda: init_params(model, config.model, jax.random.key(0)))
  # the step and the parameters alone: a partial restore, which needs no optimizer state
  like = {"step": np.zeros((), np.int32),
          "params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)}
  try:
    if step is None:  # the latest that restores: a damaged newest one is named and skipped
      restored, _ = checkpoint.restore_latest_good(manager, like, move_bad=False)
    else:
      restored, _ = checkpoint.restore(manager, like, step)
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 -- Orbax and TensorStore raise many kinds
    raise UserError(f"the checkpoint of --step={step} in {workdir} is damaged "
                    f"({type(e).__name__}): pass another --step, or leave it out for the "
                    f"latest good one") from None
  finally:
    manager.close()
  return config, tokenizer, model, restored["params"], int(restored["step"])
