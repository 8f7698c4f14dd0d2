"""Language-model windows: random spans of block_size + 1 tokens, split into inputs and targets.

The batch for a step is a pure function of (seed, step): a resumed run draws exactly the batches
an uninterrupted run would, and no sampler state needs saving.

A BPE corpus is tokenized once: its ids are cached as a uint16/uint32 .npy file under
<data dir>/tokens/, named by (the split text's sha256, the tokenizer's id), and read back as a
memory map, so a second run starts at once and the ids never sit in memory as a Python list.
"""

import hashlib
import pathlib
from typing import Any, NamedTuple

import numpy as np

from llm_jax.data.corpora import data_dir, load_text, split
from llm_jax.data.tokenizers import (CharTokenizer, make_tokenizer, normalization_of,
                                     normalize, tokenizer_id)
from llm_jax.errors import UserError
from llm_jax.fileio import atomic_write

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
  val_bytes: int  # UTF-8 bytes of the val text: bits/byte = nats/token / ln 2 * N_val / val_bytes


def token_cache_path(tokenizer, text: str, data_dir_config: str = "") -> pathlib.Path:
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]
  return data_dir(data_dir_config) / "tokens" / f"{digest}-{tokenizer_id(tokenizer)}.npy"


def cached_tokens(tokenizer, text: str, data_dir_config: str = "") -> np.ndarray:
  """The (N,) ids of `text`, from the token cache (written first if absent), memory-mapped.

  The file is written chunk by chunk under a temporary name, its header rewritten with the final
  length, then renamed: a crash or a concurrent run never leaves a partial cache behind.
  """
  if not text:
    return np.zeros(0, np.int32)
  path = token_cache_path(tokenizer, text, data_dir_config)
  if not path.exists():
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)

    def header(n):
      return {"descr": dtype.str, "fortran_order": False, "shape": (n,)}

    with atomic_write(path, "wb") as f:
      np.lib.format.write_array_header_1_0(f, header(0))  # the length is known at the end
      offset, n = f.tell(), 0
      for ids in tokenizer.encode_chunks(text):
        f.write(ids.astype(dtype).tobytes())
        n += len(ids)
      f.seek(0)
      np.lib.format.write_array_header_1_0(f, header(n))  # padded: the same size as before
      assert f.tell() == offset, "the .npy header changed size"
  return np.load(path, mmap_mode="r", allow_pickle=False)  # a user's file is never unpickled


def load_lm_data(cfg, block_size: int, tokenizer=None) -> LMData:
  """cfg: config.data. The corpus, Unicode-normalized (data.normalize), split 90/10 by characters
  and tokenized.

  `tokenizer`: the one saved with a run being resumed; None builds one (config.data.tokenizer).
  Character ids are computed in one vectorized pass; BPE ids come from the token cache.
  """
  form = tokenizer.normalization if tokenizer else normalization_of(cfg.normalize, cfg.tokenizer)
  text = normalize(load_text(cfg), form)  # split and counted in bytes as the tokenizer sees it
  tokenizer = tokenizer or make_tokenizer(cfg.tokenizer, text, cfg.data_dir, form)
  train_text, val_text = split(text)
  if isinstance(tokenizer, CharTokenizer):
    train, val = tokenizer.encode(train_text), tokenizer.encode(val_text)
  else:
    train, val = (cached_tokens(tokenizer, t, cfg.data_dir) for t in (train_text, val_text))
  data = LMData(tokenizer, train, val, len(val_text.encode("utf-8")))
  for name, tokens in (("train", data.train), ("val", data.val)):
    if len(tokens) < block_size + 1:
      raise UserError(f"the {name} split of corpus {cfg.corpus!r} has {len(tokens)} tokens, fewer "
                      f"than model.block_size + 1 = {block_size + 1}: use more text or a smaller "
                      f"--config.model.block_size")
  return data
