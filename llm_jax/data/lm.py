"""Language-model windows: random spans of block_size + 1 tokens, split into inputs and targets.

The batch for a step is a pure function of (seed, step): a resumed run draws exactly the batches
an uninterrupted run would, and no sampler state needs saving.
"""

from typing import Any, NamedTuple

import numpy as np

from llm_jax.data.corpora import load_text, split
from llm_jax.data.tokenizers import CharTokenizer
from llm_jax.errors import UserError

# independent random streams of one seed: the training batches, and the fixed evaluation batches
TRAIN_STREAM, EVAL_STREAM = 0, 1


def window_starts(n_tokens: int, block_size: int, seed: int, step: int, count: int,
                  stream: int = TRAIN_STREAM) -> np.ndarray:
  """`count` window starts in [0, n_tokens - block_size - 1], drawn from (seed, stream, step)."""
  rng = np.random.default_rng([seed, stream, step])
  return rng.integers(0, n_tokens - block_size, size=count)


def get_batch(tokens: np.ndarray, block_size: int, batch_shape: tuple[int, ...], seed: int,
              step: int, stream: int = TRAIN_STREAM) -> dict:
  """{'inputs', 'targets'}: int32 arrays of shape batch_shape + (block_size,), targets shifted by one."""
  count = int(np.prod(batch_shape))
  starts = window_starts(len(tokens), block_size, seed, step, count, stream)
  win = tokens[starts[:, None] + np.arange(block_size + 1)].astype(np.int32)  # (count, T + 1)
  win = win.reshape(*batch_shape, block_size + 1)
  return {"inputs": win[..., :-1], "targets": win[..., 1:]}


class LMData(NamedTuple):
  tokenizer: Any
  train: np.ndarray  # (N_train,) token ids
  val: np.ndarray  # (N_val,) token ids


def load_lm_data(cfg, block_size: int, tokenizer=None) -> LMData:
  """cfg: config.data. The corpus split 90/10 by characters and tokenized.

  `tokenizer`: the one saved with a run being resumed; None builds one from the corpus.
  """
  text = load_text(cfg)
  tokenizer = tokenizer or CharTokenizer.from_text(text)
  train_text, val_text = split(text)
  data = LMData(tokenizer, tokenizer.encode(train_text), tokenizer.encode(val_text))
  for name, tokens in (("train", data.train), ("val", data.val)):
    if len(tokens) < block_size + 1:
      raise UserError(f"the {name} split of corpus {cfg.corpus!r} has {len(tokens)} tokens, fewer "
                      f"than model.block_size + 1 = {block_size + 1}: use more text or a smaller "
                      f"--config.model.block_size")
  return data
