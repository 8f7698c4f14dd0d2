"""A task joins a dataset to a model family for the training loop, which knows nothing else.

The loop asks a task for: the model and the batch keys it takes (for the loss factory), the
global batch of any step (a pure function of (seed, step)), fixed evaluation batches, extra
evaluation metrics, and a sample to show at the end. `build_task(config)` picks the task by
`config.model.name`: next-token prediction for the language models, a seq2seq task (source ->
target, teacher forcing) for the encoder-decoder transformer.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import decoding
from llm_jax.data import seq2seq as seq2seq_data
from llm_jax.data.lm import EVAL_STREAM, get_batch, load_lm_data
from llm_jax.errors import UserError
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
    except UserError:  # a vocabulary without a newline
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


# val examples the seq2seq sample shows
SAMPLE_EXAMPLES = 8


def seq2seq_task(config, tokenizer=None) -> Task:
  """Source -> target with teacher forcing (the transformer): the decoder reads BOS + target and
  is scored on target + EOS, padding weighted 0. Each evaluation also decodes a fixed subset of
  the val split greedily (the distinct examples of the val batches) for token accuracy and exact
  match."""
  tc = config.train
  data = seq2seq_data.load_seq2seq_data(config.data, config.model.block_size, config.seed,
                                        tokenizer)
  tok = data.tokenizer
  model = build_model(config.model, tok.vocab_size)
  eval_batches = seq2seq_data.eval_batches(data, (tc.eval_iters, tc.batch_size), config.seed)
  n_decoded = min(tc.eval_iters * tc.batch_size, len(data.pairs["val"]))
  val = {k: v[:n_decoded] for k, v in data.arrays["val"].items()}
  S, T = val["inputs"].shape[1], val["targets"].shape[1]

  def decode_val(params):  # one batch of one shape: compiled once for the whole run
    return decoding.decode_sources(model, params, val["inputs"], max_len=T, bos_id=tok.BOS,
                                   eos_id=tok.EOS, batch_size=n_decoded)

  def eval_metrics(params, losses):
    scores = decoding.match_scores(decode_val(params), val["targets"], val["weights"])
    return {f"val_{k}": v for k, v in scores.items()}

  def sample(params, n_tokens, seed):
    """A few val sources, each with its greedy decoding and, when that is wrong, the target."""
    del n_tokens, seed  # greedy decoding of fixed examples: nothing to draw
    lines = []
    for (source, target), ids in zip(data.pairs["val"][:SAMPLE_EXAMPLES], decode_val(params)):
      out = tok.decode(ids)
      lines.append(f"{source} -> {out}" + ("" if out == target else f"   (expected {target})"))
    return "\n".join(lines)

  n = {name: len(p) for name, p in data.pairs.items()}
  return Task(
      tokenizer=tok, model=model, input_keys=("inputs", "decoder_inputs"),
      train_batch=lambda step: seq2seq_data.get_batch(
          data.arrays["train"], (tc.grad_accum_steps, tc.batch_size), config.seed, step),
      eval_batches=eval_batches, eval_metrics=eval_metrics, sample=sample,
      describe=f"task {config.data.task}: vocab {tok.vocab_size}, {n['train']:,} train / "
               f"{n['val']:,} val / {n['test']:,} test examples, sources of <= {S} and targets "
               f"of <= {T - 1} characters",
      tokens_per_example=S + T)


TASKS = {"bigram": lm_task, "gpt": lm_task, "transformer": seq2seq_task}


def build_task(config, tokenizer=None) -> Task:
  """The task of config.model.name. `tokenizer`: the one saved with a run being resumed."""
  return TASKS[config.model.name](config, tokenizer)
