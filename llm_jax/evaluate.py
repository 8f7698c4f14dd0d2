"""Held-out scores of a trained run: load its config, tokenizer and a checkpoint, then score.

    llm-jax evaluate --workdir=runs/transformer_reverse --split=test --beam_size=4
    llm-jax evaluate --workdir=runs/gpt_char

The transformer: every source of the split (val or test, never trained on) is decoded, greedily or
by beam search, and compared with its target: token accuracy (the share of target positions,
EOS included, decoded right) and exact match (the share of targets decoded entirely right).
A language model: the mean loss over the task's fixed val batches, and its bits per byte. (Each
task kind's `evaluate`, training/tasks.py.)
"""

from llm_jax.config import default_config
from llm_jax.errors import UserError
from llm_jax.training.tasks import task_kind
from llm_jax.training.workdir import load_run


def evaluate_run(workdir, split: str = "val", beam_size: int = 1, alpha: float = 0.6,
                 step: int | None = None) -> dict:
  """The scores of the run in workdir at `step` (default: the latest) on `split`, as a dict."""
  if split not in ("val", "test"):
    raise UserError(f"--split={split} is invalid: use val or test")
  if beam_size < 1:
    raise UserError(f"--beam_size={beam_size} is invalid: use 1 (greedy) or more")
  if alpha < 0:
    raise UserError(f"--alpha={alpha} is invalid: use 0 (no length penalty) or more")
  config, tokenizer, model, params, step = load_run(workdir, step, default_config().to_dict())
  result = {"model": config.model.name, "step": step, "split": split}
  return {**result, **task_kind(config).evaluate(config, tokenizer, model, params, split=split,
                                                 beam_size=beam_size, alpha=alpha)}


def describe(r: dict) -> str:
  """One readable line of evaluate_run's result."""
  head = f"{r['model']} at step {r['step']}, {r['split']} split"
  if "exact_match" in r:
    how = "greedy" if r["beam_size"] == 1 else f"beam {r['beam_size']}, alpha {r['alpha']}"
    return (f"{head} ({r['examples']:,} {r['task']} examples, {how}): exact match "
            f"{100 * r['exact_match']:.2f}%, token accuracy {100 * r['token_accuracy']:.2f}%")
  return f"{head}: loss {r['loss']:.4f}, {r['bpb']:.4f} bits per byte"
