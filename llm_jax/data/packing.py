"""Rows aligned to documents (config.data.packing): pure functions on token arrays and document
boundaries, used by prepared datasets (data/prepared.py) and meant for any data of documents.

A document starts with its BOS token (a prepared dataset's end-of-text token, which `llm-jax
prepare` writes before every document). Packings of rows of `row_len` tokens (block_size + 1:
the inputs and, shifted by one, the targets):

  none      windows cut anywhere (prepared.py's samplers): a token attends across a boundary into
            the end of an unrelated document
  bos       every row starts at a document start; the row is filled best-fit from a pool of
            whole documents (the longest that fits the room left, again and again), and when
            none fits, the shortest is cropped to fill the row exactly: its tail is discarded
            (nanochat's BOS-aligned best-fit). A document longer than a row starts a row of
            its own, so that only its part past one row is lost (otherwise such documents
            gather in the pool and are cropped at the ends of rows, losing more: on documents
            of about half a row, 0.28 of the tokens instead of 0.10). No padding; the cost is
            the discarded fraction.
  doc_mask  bos rows, and each token attends only within its own document, its position
            counted from the document's start (segments, positions and document_mask below;
            the models take positions_BT and mask_BTT)
"""

import bisect
import itertools
from typing import Iterator, NamedTuple

import numpy as np

PACKINGS = ("none", "bos", "doc_mask")
# documents the best-fit chooses among (nanochat's buffer is of this order)
POOL_DOCS = 128


def split_documents(tokens: np.ndarray, bos_id: int) -> list[np.ndarray]:
  """The documents of `tokens`, each from a BOS token to the next (the part before the first
  BOS, a document's tail, is left out)."""
  starts = np.flatnonzero(np.asarray(tokens) == bos_id)
  return np.split(np.asarray(tokens), starts)[1:]


class Packed(NamedTuple):
  rows: np.ndarray  # (n_rows, row_len) int32 tokens, each row starting with a BOS
  segments: np.ndarray  # (n_rows, row_len) int32: the document of each token, 0, 1, ... per row
  used_tokens: int  # tokens of the documents taken (placed whole or cropped)
  discarded_tokens: int  # of those, the cropped tails


def best_fit_rows(docs: Iterator[np.ndarray], n_rows: int, row_len: int,
                  pool_docs: int = POOL_DOCS) -> Packed:
  """n_rows rows of row_len tokens from the documents `docs` yields, in order, best-fit (module
  docstring). Deterministic: the same documents give the same rows."""
  rows = np.empty((n_rows, row_len), np.int32)
  segments = np.empty((n_rows, row_len), np.int32)
  pool, counter = [], itertools.count()  # (length, arrival, doc), sorted by length
  used = discarded = 0
  for r in range(n_rows):
    filled, seg = 0, 0
    while filled < row_len:
      while len(pool) < pool_docs:
        doc = next(docs)
        bisect.insort(pool, (len(doc), next(counter), doc))
      room = row_len - filled
      if filled == 0 and pool[-1][0] >= row_len:  # a document longer than a row opens one
        i = len(pool) - 1
      else:
        i = bisect.bisect_right(pool, (room, float("inf"))) - 1  # the longest that fits
      n, _, doc = pool.pop(max(i, 0))  # none fits: the shortest, cropped
      take = min(n, room)
      rows[r, filled:filled + take] = doc[:take]
      segments[r, filled:filled + take] = seg
      used, discarded = used + n, discarded + n - take
      filled, seg = filled + take, seg + 1
  return Packed(rows, segments, used, discarded)


def positions(segments_BT: np.ndarray) -> np.ndarray:
  """Each token's position within its document: 0 at every segment's first token."""
  segments_BT = np.asarray(segments_BT)
  T = segments_BT.shape[-1]
  idx = np.broadcast_to(np.arange(T), segments_BT.shape)
  first = np.concatenate([np.ones_like(segments_BT[..., :1], bool),
                          segments_BT[..., 1:] != segments_BT[..., :-1]], axis=-1)
  start = np.maximum.accumulate(np.where(first, idx, 0), axis=-1)
  return (idx - start).astype(np.int32)


def document_mask(segments_BT):
  """(B, T, T) boolean: token t attends to token s when s <= t in the same document (works on
  numpy and on jax arrays, inside a jitted loss)."""
  T = segments_BT.shape[-1]
  same = segments_BT[..., :, None] == segments_BT[..., None, :]
  return same & (np.arange(T)[None, :] <= np.arange(T)[:, None])


def lm_batch(packed: Packed, doc_mask: bool) -> dict:
  """{'inputs', 'targets'} (rows, row_len - 1) from packed rows; with doc_mask also the inputs'
  'segments' and 'positions' (the loss hands the model positions_BT and the document mask)."""
  rows = packed.rows
  out = {"inputs": rows[:, :-1], "targets": rows[:, 1:]}
  if doc_mask:
    seg = packed.segments[:, :-1]
    out.update(segments=seg, positions=positions(seg))
  return out
