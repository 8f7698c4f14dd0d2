"""How harness.py scores lm-eval's requests on a language model: the requests that continue one
context packed into one row (`pack`), rows padded to a few bucket lengths (`buckets`), scored by
one jitted function per shape (`score_packed`), and the run's special token ids (`special_ids`).
harness.py's docstring says what each means; harness_lm.JaxLM uses them. Needs no lm-eval."""

import contextlib
from functools import partial

import jax
import jax.numpy as jnp

from llm_jax.errors import UserError

# the shortest bucket: shorter requests share its program
MIN_BUCKET = 16
# lm-eval's default for generate_until (HFLM.max_gen_toks)
MAX_GEN_TOKS = 256


def buckets(block_size: int) -> list[int]:
  """The padded lengths of scoring batches: powers of two from MIN_BUCKET and the points 1.5x
  between them (a request pads by a third at most), then block_size."""
  out, n = [], MIN_BUCKET
  while n < block_size:
    out += [m for m in (n, n * 3 // 2) if m < block_size]
    n *= 2
  return out + [block_size]


def bucket_of(length: int, block_size: int) -> int:
  for b in buckets(block_size):
    if length <= b:
      return b
  raise UserError(f"a request of {length} tokens is longer than the largest bucket "
                  f"(model.block_size={block_size}): lm-eval cuts contexts from the left, never "
                  f"a continuation; use a task whose answers are shorter than the context")


@partial(jax.jit, static_argnums=(0,))
def score_packed(model, params, tokens_BL, positions_BL, segments_BL, at_BL, targets_BL):
  """Packed rows (`pack`) -> (B, L) log p(targets_BL) (float32) predicted at rows' positions
  at_BL, and whether each target is the argmax there (lm-eval's greedy match). A token attends to
  its row's context (segment 0) and to its own segment, causally by position; padding (segment
  -1) to nothing real."""
  seg_q, seg_k = segments_BL[:, :, None], segments_BL[:, None, :]
  mask_BLL = (((seg_k == 0) | (seg_k == seg_q)) &
              (positions_BL[:, None, :] <= positions_BL[:, :, None]))
  logits_BLV = model.apply({"params": params}, tokens_BL, positions_BT=positions_BL,
                           mask_BTT=mask_BLL)
  logits_BLV = jnp.take_along_axis(logits_BLV, at_BL[..., None], axis=1).astype(jnp.float32)
  logp_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
  logp_BL = jnp.take_along_axis(logp_BLV, targets_BL[..., None], axis=-1)[..., 0]
  return logp_BL, jnp.argmax(logits_BLV, axis=-1) == targets_BL


def pack(context, continuations, block_size: int):
  """One context and its continuations (token lists) -> rows, each a dict of lists: tokens,
  positions, segments (0: the context, k: the k-th continuation of the row) and the scored
  slots (at: the row index whose logits predict the token, target, and which continuation).
  A row is the context, then each continuation less its last token, at the positions it would
  have after the context alone: the model reads the context once for all of them. A row holds
  block_size tokens at most, and as many continuations as the context has tokens (so that its
  scored slots fit its length); more start another row."""
  c, rows = len(context), []
  for j, cont in enumerate(continuations):
    if not rows or len(rows[-1]["tokens"]) + len(cont) - 1 > block_size or rows[-1]["n"] == c:
      rows.append({"tokens": list(context), "positions": list(range(c)), "segments": [0] * c,
                   "at": [], "target": [], "owner": [], "n": 0})
    row = rows[-1]
    row["n"] += 1
    start = len(row["tokens"])
    row["tokens"] += cont[:-1]
    row["positions"] += range(c, c + len(cont) - 1)
    row["segments"] += [row["n"]] * (len(cont) - 1)
    row["at"] += [c - 1] + list(range(start, start + len(cont) - 1))
    row["target"] += cont
    row["owner"] += [j] * len(cont)
  return rows


def special_ids(tokenizer, hf_config: dict | None):
  """(eot_token_id or None, prefix_token_id) of a run's tokenizer (see the module docstring)."""
  hf_config = hf_config or {}
  eot = hf_config.get("eos_token_id")
  eot = eot[0] if isinstance(eot, list) else eot
  if eot is None and tokenizer.kind == "tiktoken":
    with contextlib.suppress(KeyError, AttributeError, ValueError):
      eot = int(tokenizer.encoding.eot_token)
  if eot is None and tokenizer.kind == "hf":
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    eot = next((vocab[t] for t in ("<|endoftext|>", "</s>", "<|end_of_text|>") if t in vocab),
               None)
  prefix = hf_config.get("bos_token_id")
  prefix = prefix[0] if isinstance(prefix, list) else prefix
  if prefix is None:
    prefix = eot
  if prefix is None:
    try:
      newline = tokenizer.encode("\n")
    except UserError:  # a character vocabulary without a newline
      newline = []
    prefix = int(newline[0]) if len(newline) == 1 else 0
  return (None if eot is None else int(eot)), int(prefix)
