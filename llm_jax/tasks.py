"""A task joins a dataset to a model family for the training loop, which knows nothing else.

The loop asks a task for: the model and the batch keys it takes (for the loss factory), the
global batch of any step (a pure function of (seed, step)), fixed evaluation batches, extra
evaluation metrics, and a sample to show at the end. `build_task(config)` picks the task by
`config.model.name`.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import decoding
from llm_jax.data.lm import EVAL_STREAM, get_batch, load_lm_data
from llm_jax.models import build_model


class Task(NamedTuple):
  tokenizer: Any
  model: Any  # a flax.linen module
  input_keys: tuple  # the batch entries the model takes, in order
  # step -> the global batch of that step: numpy arrays shaped (grad_accum_steps, batch_size, ...)
  train_batch: Callable[[int], dict]
  # split name -> fixed evaluation batches shaped (eval_iters, batch_size, ...)
  eval_batches: dict
  # (params, {'train': loss, 'val': loss}) -> further metrics to log at each evaluation
  eval_metrics: Callable[[Any, dict], dict]
  # (params, n_tokens, seed) -> text showing what the model learned
  sample: Callable[[Any, int, int], str]
  # one line on the data, for the start-of-run summary
  describe: str
  tokens_per_example: int


def lm_task(config, tokenizer=None) -> Task:
  """Next-token prediction on a text corpus (bigram, GPT)."""
  tc, T = config.train, config.model.block_size
  data = load_lm_data(config.data, T, tokenizer)
  model = build_model(config.model, data.tokenizer.vocab_size)
  eval_shape = (tc.eval_iters, tc.batch_size)

  def eval_metrics(params, losses):
    # bits per byte: nats/token -> bits/token -> bits/byte, comparable across tokenizers
    return {"val_bpb": losses["val"] / math.log(2) * len(data.val) / data.val_bytes}

  def sample(params, n_tokens, seed, prompt="\n"):
    """A sample from a newline (as nanoGPT's sample.py), or from token 0 if there is none."""
    try:
      prompt_ids = data.tokenizer.encode(prompt)
    except Exception:
      prompt_ids = np.zeros(1, np.int32)
    out = decoding.generate(model, params, jnp.asarray(prompt_ids)[None], jax.random.key(seed),
                            max_new_tokens=n_tokens, block_size=T, temperature=1.0)
    return data.tokenizer.decode(np.asarray(out[0, len(prompt_ids):]))

  return Task(
      tokenizer=data.tokenizer, model=model, input_keys=("inputs",),
      train_batch=lambda step: get_batch(data.train, T, (tc.grad_accum_steps, tc.batch_size),
                                         config.seed, step),
      eval_batches={name: get_batch(tokens, T, eval_shape, config.seed, i, stream=EVAL_STREAM)
                    for i, (name, tokens) in enumerate((("train", data.train), ("val", data.val)))},
      eval_metrics=eval_metrics, sample=sample,
      describe=f"vocab {data.tokenizer.vocab_size}, {len(data.train):,} train / "
               f"{len(data.val):,} val tokens",
      tokens_per_example=T)


TASKS = {"bigram": lm_task, "gpt": lm_task}


def build_task(config, tokenizer=None) -> Task:
  """The task of config.model.name. `tokenizer`: the one saved with a run being resumed."""
  return TASKS[config.model.name](config, tokenizer)
