"""Downstream evaluation: EleutherAI's lm-evaluation-harness (`lm_eval`) on any llm-jax run.

    llm-jax harness --workdir=runs/gpt2 --tasks=hellaswag,arc_easy --limit=500
    llm-jax harness --workdir=runs/baby --tasks=my_task --include_path=tasks/   # local, offline

`JaxLM` is an `lm_eval` model (lm_eval.api.model.TemplateLM) backed by a run's parameters. It
means exactly what lm-eval's Hugging Face backend (HFLM) means, so that its figures line up with
the literature's:
- loglikelihood: context and continuation are encoded as HFLM encodes them (lm-eval's own
  _encode_pair); the model reads (context + continuation)[-(block_size + 1):][:-1] (a context
  too long is cut from the left) and the continuation's tokens are scored: the sum of their log
  probabilities, and whether each is the argmax.
- loglikelihood_rolling: lm-eval's windows (utils.get_rolling_token_windows with context_len=1,
  made disjoint), the first one conditioned on the prefix token, summed.
- generate_until: the batched KV-cache engine (decoding/engine.py), greedy unless do_sample; the context cut
  from the left to block_size - max_gen_toks tokens (at least 1); the text cut at the first
  end-of-text token and at the first stop sequence (lm-eval's postprocess_generated_text).

Speed: the requests that continue one context (a multiple-choice item's endings) are packed into
one row: the context, then each continuation less its last token at the positions it would have
after the context alone, each attending to the context and to itself (`pack`; the models' packed
sequences, positions_BT and mask_BTT). The context is read once, not once per ending: on
HellaSwag's form (a context and four shorter endings) that is about 2.5x fewer tokens. Rows are
sorted by length and scored in batches of a fixed size, each padded (right, masked out) to a
bucket length (powers of two and the points 1.5x between them, up to block_size): a task
compiles a handful of programs (one per bucket), never one per request.
Generation runs the requests of the same settings through the batched engine
(decoding/engine.py): prompts of any lengths in one batch, one program per bucket of lengths.

The prefix token (what an empty context or the first rolling window is conditioned on; lm-eval's
prefix_token_id): a converted checkpoint's bos (else eos) token id, from the hf_config.json
convert keeps; else the tokenizer's end-of-text token (tiktoken's <|endoftext|>); else a newline
(nanoGPT's sampling prompt); else token 0. The end-of-text token (eot_token_id) is the eos of a
converted checkpoint or tiktoken's <|endoftext|>; a character tokenizer has none.

`lm_eval` is imported lazily (the optional extra `[eval]`): nothing else in llm-jax needs it.
"""

import contextlib
import difflib
import json
import logging
import os
import socket

import numpy as np

from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write
from llm_jax.harness_scoring import (MAX_GEN_TOKS, MIN_BUCKET, bucket_of, buckets,  # noqa: F401
                                     pack, score_packed, special_ids)
from llm_jax.models import FAMILIES

INSTALL = "lm-eval is not installed: pip install -e '.[eval]' (or pip install lm-eval)"
# requests scored at once during training (train.harness_tasks)
TRAINING_BATCH_SIZE = 32


def require_lm_eval():
  """The lm_eval package, or one line saying how to install it."""
  try:
    import lm_eval  # noqa: F401
    import lm_eval.api.model  # noqa: F401
  except ImportError:
    raise UserError(INSTALL) from None
  return lm_eval


def make_lm(config, tokenizer, model, params, batch_size: int = 32, hf_config: dict | None = None):
  """An lm_eval model (JaxLM) scoring with `model` and `params`: the class is made here, so that
  lm_eval is imported only when it is used."""
  require_lm_eval()
  if FAMILIES[config.model.name].task != "lm":
    raise UserError(f"model {config.model.name!r} is an encoder-decoder (it maps a source to a "
                    f"target): lm-eval's tasks score text continuations, which the language "
                    f"models (gpt, bigram, converted checkpoints) do")
  if batch_size < 1:
    raise UserError(f"--batch_size={batch_size} is invalid: use 1 or more")
  from llm_jax.harness_lm import JaxLM  # (it subclasses lm-eval's TemplateLM)
  return JaxLM(config, tokenizer, model, params, batch_size, hf_config)




def read_hf_config(workdir) -> dict | None:
  """The source checkpoint's config.json kept by `llm-jax convert` (its bos/eos ids), if any."""
  from llm_jax.training.workdir import HF_CONFIG_FILE
  path = os.path.join(workdir, HF_CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def lm_from_run(workdir, step=None, batch_size: int = 32):
  """(the JaxLM of the run in workdir at `step`, default the latest; the step loaded)."""
  from llm_jax.config import default_config
  from llm_jax.training.workdir import load_run
  require_lm_eval()
  config, tokenizer, model, params, step = load_run(workdir, step, default_config().to_dict())
  return make_lm(config, tokenizer, model, params, batch_size,
                 read_hf_config(os.path.abspath(workdir))), step


def parse_tasks(tasks) -> list[str]:
  """'a,b' or ['a', 'b'] -> ['a', 'b'] (blanks dropped)."""
  if isinstance(tasks, str):
    tasks = tasks.split(",")
  return [t.strip() for t in tasks if t and t.strip()]


def task_manager(tasks: list[str], include_path: str = ""):
  """(lm-eval's TaskManager that knows `tasks`, whether they are all local). The include path's
  alone when it holds them all (indexing lm-eval's thousands of shipped tasks takes seconds), else
  with the shipped ones. A missing include path or an unknown task is one line."""
  from lm_eval.tasks import TaskManager
  if include_path:
    include_path = os.path.abspath(os.path.expanduser(include_path))
    if not os.path.isdir(include_path):
      raise UserError(f"--include_path={include_path} is not a folder: pass a folder of lm-eval "
                      f"task YAML files")
    local = TaskManager(include_path=include_path, include_defaults=False)
    if all(t in local.all_tasks for t in tasks):
      return local, True
  manager = TaskManager(include_path=include_path or None)
  for t in tasks:
    if t not in manager.all_tasks:
      close = difflib.get_close_matches(t, manager.all_tasks, n=3)
      raise UserError(f"--tasks: unknown lm-eval task {t!r}" +
                      (f" (did you mean {', '.join(close)}?)" if close else "") +
                      ("" if include_path else
                       ": a local task's folder is passed with --include_path") +
                      " (`lm_eval ls tasks` lists the shipped ones)")
  return manager, False


@contextlib.contextmanager
def offline():
  """Inside the block, Hugging Face's hub and datasets are not asked (no network, no waits): the
  offline switches they read at each call (set from HF_HUB_OFFLINE at their import) are on, and
  afterwards as they were."""
  import datasets.config
  import huggingface_hub.constants
  switches = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
              (huggingface_hub.constants, "HF_HUB_OFFLINE")]
  saved = [getattr(module, name) for module, name in switches]
  for module, name in switches:
    setattr(module, name, True)
  try:
    yield
  finally:
    for (module, name), value in zip(switches, saved):
      setattr(module, name, value)


# where lm-eval's shipped tasks download their datasets from
HUB = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
  """Whether the Hugging Face Hub answers (a TCP connection, within `timeout` seconds); False at
  once where HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set."""
  if "1" in (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE")):
    return False
  try:
    socket.create_connection(HUB, timeout=timeout).close()
    return True
  except OSError:
    return False


@contextlib.contextmanager
def _quiet():
  """lm-eval's INFO and WARNING logs (one line per task and per truncated request) and its
  progress bars (on stderr) off: a training run's log keeps its own lines."""
  logger = logging.getLogger("lm_eval")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
      yield
  finally:
    logger.setLevel(level)


def evaluate(lm, tasks, num_fewshot=None, limit=None, include_path="", log_samples=False,
             quiet=True, managers: dict | None = None) -> dict:
  """lm-eval's simple_evaluate of `lm` on `tasks`: its results dictionary ('results',
  'configs', 'n-shot', ...; 'samples' with log_samples). Local tasks alone run offline.
  managers: the caller's cache of task managers ((tasks, include path) -> task_manager's), so
  that a training run's evaluations index the tasks once."""
  lm_eval = require_lm_eval()
  tasks = parse_tasks(tasks)
  if not tasks:
    raise UserError("--tasks is empty: name one or more lm-eval tasks, comma-separated")
  if limit is not None and limit <= 0:
    raise UserError(f"--limit={limit} is invalid: use a positive number of items (or leave it out)")
  if num_fewshot is not None and num_fewshot < 0:
    raise UserError(f"--num_fewshot={num_fewshot} is invalid: use 0 or more")
  managers = {} if managers is None else managers
  key = (tuple(tasks), include_path)
  if key not in managers:
    managers[key] = task_manager(tasks, include_path)
  manager, local = managers[key]
  # a shipped task's dataset comes from the Hub: without network, only what datasets cached loads,
  # at once (offline), rather than after a minute of retries
  hub = not local and hub_reachable()
  try:
    with _quiet() if quiet else contextlib.nullcontext(), \
         offline() if not hub else contextlib.nullcontext():
      results = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot,
                                        limit=limit, task_manager=manager,
                                        log_samples=log_samples,
                                        bootstrap_iters=0 if quiet else 100000)
  except ValueError as e:
    if num_fewshot and "larger than population" in str(e):  # random.sample's
      raise UserError(f"--num_fewshot={num_fewshot} is more than a task of {', '.join(tasks)} "
                      f"has examples to draw its shots from: use fewer shots") from None
    raise
  except (UserError, KeyboardInterrupt):
    raise
  except Exception as e:  # noqa: BLE001 -- datasets' errors for a dataset it cannot fetch
    if hub or local:
      raise
    why = (str(e).splitlines() or [type(e).__name__])[0][:160]
    raise UserError(f"--tasks={','.join(tasks)}: a task's dataset is not in the local cache and "
                    f"the Hugging Face Hub ({HUB[0]}) cannot be reached ({why}): run once where "
                    f"there is network (datasets caches it), or use local tasks (--include_path)"
                    ) from None
  return results


def write_results(results: dict, path) -> None:
  """The results dictionary as JSON (samples left out), written whole or not at all."""
  from lm_eval.utils import handle_non_serializable
  with atomic_write(path) as f:
    json.dump({k: v for k, v in results.items() if k != "samples"}, f, indent=2,
              default=handle_non_serializable)


def run_harness(workdir, tasks, num_fewshot=None, limit=None, include_path="", batch_size=32,
                step=None, output=None) -> tuple[dict, list[str]]:
  """`llm-jax harness`: (results, the JSON files written: <workdir>/harness/<step>.json and
  output)."""
  require_lm_eval()
  tasks = parse_tasks(tasks)
  if include_path and not os.path.isdir(os.path.expanduser(include_path)):
    raise UserError(f"--include_path={include_path} is not a folder: pass a folder of lm-eval "
                    f"task YAML files")
  lm, step = lm_from_run(workdir, step, batch_size)
  results = evaluate(lm, tasks, num_fewshot, limit, include_path, quiet=False)
  paths = [os.path.join(os.path.abspath(workdir), "harness", f"{step}.json")]
  if output:
    paths.append(os.path.abspath(output))
  for p in paths:
    write_results(results, p)
  return results, paths


def flat_metrics(results: dict) -> dict:
  """lm-eval's results -> {'harness/<task>/<metric>': value}: numbers only, stderr left out, the
  'none' filter dropped from the name ('acc,none' -> 'acc'; 'exact_match,strict' ->
  'exact_match_strict')."""
  out = {}
  for task, metrics in results.get("results", {}).items():
    for key, value in metrics.items():
      name, _, filt = key.partition(",")
      if not filt or "stderr" in name or isinstance(value, bool):
        continue
      if isinstance(value, (int, float)) and np.isfinite(value):
        out[f"harness/{task}/{name if filt == 'none' else name + '_' + filt}"] = float(value)
  return out


def due(train_config, step: int) -> bool:
  """Whether the in-training harness runs at this evaluation step."""
  tc = train_config
  if not parse_tasks(tc.harness_tasks):
    return False
  return tc.harness_every == 0 or step % tc.harness_every == 0 or step == tc.max_steps


class TrainingMetrics:
  """The loop's hook at each evaluation (training/loop.Hooks.evaluations): lm-eval's metrics of
  train.harness_tasks on the current parameters ({} when off or not due), as
  {'harness/<task>/<metric>': value}. One per run: it keeps the run's task managers."""

  def __init__(self):
    self.managers = {}

  def __call__(self, config, task, params, step: int) -> dict:
    tc = config.train
    if not due(tc, step):
      return {}
    lm = make_lm(config, task.tokenizer, task.model, params, TRAINING_BATCH_SIZE)
    results = evaluate(lm, tc.harness_tasks, limit=tc.harness_limit or None,
                       include_path=tc.harness_include_path, managers=self.managers)
    return flat_metrics(results)
