"""Held-out scores of a trained run: load its config, tokenizer and a checkpoint, then score.

    llm-jax evaluate --workdir=runs/transformer_reverse --split=test --beam_size=4
    llm-jax evaluate --workdir=runs/gpt_char

The transformer: every source of the split (val or test, never trained on) is decoded, greedily or
by beam search, and compared with its target: token accuracy (the share of target positions,
EOS included, decoded right) and exact match (the share of targets decoded entirely right).
A language model: the mean loss over the task's fixed val batches, and its bits per byte.
"""

import jax

from llm_jax import decoding
from llm_jax.data.seq2seq import load_seq2seq_data
from llm_jax.errors import UserError
from llm_jax.generate import load_run
from llm_jax.tasks import build_task
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.steps import TrainState, make_evaluate

# sources decoded per call (times the beam size: rows of the decoder)
DECODE_BATCH = 256


def evaluate_run(workdir, split: str = "val", beam_size: int = 1, alpha: float = 0.6,
                 step: int | None = None) -> dict:
  """The scores of the run in workdir at `step` (default: the latest) on `split`, as a dict."""
  if split not in ("val", "test"):
    raise UserError(f"--split={split} is invalid: use val or test")
  if beam_size < 1:
    raise UserError(f"--beam_size={beam_size} is invalid: use 1 (greedy) or more")
  if alpha < 0:
    raise UserError(f"--alpha={alpha} is invalid: use 0 (no length penalty) or more")
  config, tokenizer, model, params, step = load_run(workdir, step)
  result = {"model": config.model.name, "step": step, "split": split}
  if config.model.name == "transformer":
    data = load_seq2seq_data(config.data, config.model.block_size, config.seed, tokenizer)
    arrays = data.arrays[split]
    predicted = decoding.decode_sources(
        model, params, arrays["inputs"], max_len=arrays["targets"].shape[1], bos_id=tokenizer.BOS,
        eos_id=tokenizer.EOS, beam_size=beam_size, alpha=alpha, batch_size=DECODE_BATCH)
    scores = decoding.match_scores(predicted, arrays["targets"], arrays["weights"])
    return {**result, "task": config.data.task, "examples": len(predicted),
            "beam_size": beam_size, "alpha": alpha, **scores}
  if split != "val":
    raise UserError(f"--split={split}: a language model's corpus has a train and a val split "
                    f"only: use --split=val")
  if beam_size != 1:
    raise UserError(f"--beam_size={beam_size}: beam search is for the transformer; a language "
                    f"model is scored by its loss: leave --beam_size out")
  task = build_task(config, tokenizer)
  loss_fn = make_loss_fn(task.model, task.input_keys)
  state = TrainState(step=step, params=params, opt_state=None)  # evaluation reads params only
  loss = float(jax.jit(make_evaluate(loss_fn))(state, task.eval_batches["val"]))
  return {**result, "loss": loss, "bpb": task.eval_metrics(params, {"val": loss})["val_bpb"]}


def describe(r: dict) -> str:
  """One readable line of evaluate_run's result."""
  head = f"{r['model']} at step {r['step']}, {r['split']} split"
  if "exact_match" in r:
    how = "greedy" if r["beam_size"] == 1 else f"beam {r['beam_size']}, alpha {r['alpha']}"
    return (f"{head} ({r['examples']:,} {r['task']} examples, {how}): exact match "
            f"{100 * r['exact_match']:.2f}%, token accuracy {100 * r['token_accuracy']:.2f}%")
  return f"{head}: loss {r['loss']:.4f}, {r['bpb']:.4f} bits per byte"
