"""Decoding for the encoder-decoder: greedy and beam search, jitted, with the decoder's KV cache.

The encoder runs once per source; the decoder then runs one position per step inside a
lax.while_loop, with decode=True (its self-attention keys and values in the 'cache' collection),
until every sequence has produced EOS or max_len tokens are out. Both return (B, max_len) tokens:
the target, its EOS, then PAD. PAD and BOS are never emitted: no target holds them, and a PAD in
the decoder input would be hidden as padding by the full (training) forward pass.

Beam search keeps beam_size hypotheses per source. At each step every live hypothesis is extended
by every token (but PAD and BOS), a finished one (it ended with EOS) only by itself, and the
beam_size best of these candidates are kept, ranked by GNMT's length-normalized score (Wu et al.
2016, as Flax's wmt example):

    score = log P(tokens) / lp(len),   lp(len) = ((5 + len) / 6) ** alpha,

len counting the tokens up to and including EOS (alpha = 0: plain log-probability). Keeping the
finished hypotheses in the beam makes beam size 1 greedy decoding exactly: all the candidates of a
step then share one length, so the best one is the argmax of the logits.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def init_decoder_cache(model, batch_size: int, max_len: int, src_len: int):
  """An empty decoder KV cache of max_len positions (zeros, index 0) for batch_size sources."""
  shapes = jax.eval_shape(
      partial(model.init, method="decode", decode=True), jax.random.key(0),
      jnp.zeros((batch_size, max_len), jnp.int32),
      jnp.zeros((batch_size, src_len, model.cfg.n_embd), jnp.float32),
      jnp.ones((batch_size, src_len), bool))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _encode(model, params, inputs_BS):
  memory_BSC = model.apply({"params": params}, inputs_BS, method="encode")
  return memory_BSC, inputs_BS != model.cfg.pad_id


def _decoder_step(model, params, cache, tokens_B, memory_BSC, src_valid_BS, bos_id):
  """Feeds one token per sequence at the cache's next position -> (log-probabilities (B, V) of
  the next token, -inf for PAD and BOS; the cache)."""
  logits_B1V, out = model.apply({"params": params, "cache": cache}, tokens_B[:, None], memory_BSC,
                                src_valid_BS, decode=True, method="decode", mutable=["cache"])
  logprobs_BV = jax.nn.log_softmax(logits_B1V[:, 0].astype(jnp.float32))
  V = logprobs_BV.shape[-1]
  never_V = (jnp.arange(V) == model.cfg.pad_id) | (jnp.arange(V) == bos_id)
  return jnp.where(never_V, -jnp.inf, logprobs_BV), out["cache"]


@partial(jax.jit, static_argnums=(0,), static_argnames=("max_len", "bos_id", "eos_id"))
def greedy_decode(model, params, inputs_BS, *, max_len: int, bos_id: int, eos_id: int):
  """(B, S) sources -> (B, max_len) targets: the most likely token at each step."""
  B, S = inputs_BS.shape
  memory_BSC, src_valid_BS = _encode(model, params, inputs_BS)

  def body(carry):
    t, last_B, done_B, out_BL, cache = carry
    logprobs_BV, cache = _decoder_step(model, params, cache, last_B, memory_BSC, src_valid_BS,
                                       bos_id)
    tok_B = jnp.where(done_B, model.cfg.pad_id, jnp.argmax(logprobs_BV, axis=-1).astype(jnp.int32))
    out_BL = jax.lax.dynamic_update_slice_in_dim(out_BL, tok_B[:, None], t, axis=1)
    return t + 1, tok_B, done_B | (tok_B == eos_id), out_BL, cache

  carry = (jnp.int32(0), jnp.full((B,), bos_id, jnp.int32), jnp.zeros((B,), bool),
           jnp.full((B, max_len), model.cfg.pad_id, jnp.int32),
           init_decoder_cache(model, B, max_len, S))
  carry = jax.lax.while_loop(lambda c: (c[0] < max_len) & ~c[2].all(), body, carry)
  return carry[3]


def length_penalty(length, alpha: float):
  """GNMT's lp(len) = ((5 + len) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


@partial(jax.jit, static_argnums=(0,),
         static_argnames=("beam_size", "max_len", "alpha", "bos_id", "eos_id"))
def beam_search(model, params, inputs_BS, *, beam_size: int, max_len: int, alpha: float,
                bos_id: int, eos_id: int):
  """(B, S) sources -> ((B, max_len) best targets, (B,) their scores), with K = beam_size."""
  B, S = inputs_BS.shape
  K = beam_size
  memory_BSC, src_valid_BS = _encode(model, params, inputs_BS)
  # each source's memory once per hypothesis: rows b * K + k
  memory_NSC, src_valid_NS = (jnp.repeat(x, K, axis=0) for x in (memory_BSC, src_valid_BS))
  neg_inf = jnp.float32(-jnp.inf)

  def body(carry):
    t, last_BK, logp_BK, len_BK, done_BK, out_BKL, cache = carry
    logprobs_NV, cache = _decoder_step(model, params, cache, last_BK.reshape(-1), memory_NSC,
                                       src_valid_NS, bos_id)
    V = logprobs_NV.shape[-1]
    logprobs_BKV = logprobs_NV.reshape(B, K, V)
    # a live hypothesis extends by any token; a finished one only by PAD, keeping its score
    stay_V = jnp.arange(V) == model.cfg.pad_id
    cand_logp_BKV = jnp.where(done_BK[..., None], jnp.where(stay_V, logp_BK[..., None], neg_inf),
                              logp_BK[..., None] + logprobs_BKV)
    cand_len_BK = jnp.where(done_BK, len_BK, t + 1)
    score_BKV = cand_logp_BKV / length_penalty(cand_len_BK, alpha)[..., None]
    _, flat_BK = jax.lax.top_k(score_BKV.reshape(B, K * V), K)
    beam_BK, tok_BK = flat_BK // V, (flat_BK % V).astype(jnp.int32)
    pick = lambda x_BK: jnp.take_along_axis(x_BK, beam_BK, axis=1)
    logp_BK = jnp.take_along_axis(cand_logp_BKV.reshape(B, K * V), flat_BK, axis=1)
    was_done_BK = pick(done_BK)
    len_BK = jnp.where(was_done_BK, pick(len_BK), t + 1)
    out_BKL = jnp.take_along_axis(out_BKL, beam_BK[..., None], axis=1)
    out_BKL = jax.lax.dynamic_update_slice_in_dim(out_BKL, tok_BK[..., None], t, axis=2)
    rows_N = (jnp.arange(B)[:, None] * K + beam_BK).reshape(-1)  # the parent of each new row
    # each row's cache follows its parent: the rows are axis 0, or axis 1 behind the layer axis
    # of scanned blocks (whose per-layer `index` is (n_layer,), one value per layer, unchanged)
    row_axis = int(model.cfg.scan_layers)
    cache = jax.tree.map(
        lambda x: jnp.take(x, rows_N, axis=row_axis) if x.ndim > row_axis else x, cache)
    return t + 1, tok_BK, logp_BK, len_BK, was_done_BK | (tok_BK == eos_id), out_BKL, cache

  # at the start the K hypotheses are the same (BOS): only the first may extend
  logp_BK = jnp.broadcast_to(jnp.where(jnp.arange(K) == 0, 0.0, neg_inf), (B, K))
  carry = (jnp.int32(0), jnp.full((B, K), bos_id, jnp.int32), logp_BK, jnp.zeros((B, K), jnp.int32),
           jnp.zeros((B, K), bool), jnp.full((B, K, max_len), model.cfg.pad_id, jnp.int32),
           init_decoder_cache(model, B * K, max_len, S))
  carry = jax.lax.while_loop(lambda c: (c[0] < max_len) & ~c[4].all(), body, carry)
  _, _, logp_BK, len_BK, _, out_BKL, _ = carry
  # top_k sorted the beam by score: hypothesis 0 is the best
  return out_BKL[:, 0], (logp_BK / length_penalty(len_BK, alpha))[:, 0]


def decode_sources(model, params, inputs_NS, *, max_len: int, bos_id: int, eos_id: int,
                   beam_size: int = 1, alpha: float = 0.6, batch_size: int = 256) -> np.ndarray:
  """(N, S) sources -> (N, max_len) targets, decoded batch_size at a time (greedy for beam
  size 1). The last batch is filled up with copies of the first source, so that every batch
  has one shape and the decoder compiles once."""
  N = len(inputs_NS)
  B = min(batch_size, N)
  out = []
  for start in range(0, N, B):
    chunk = np.asarray(inputs_NS[start:start + B])
    chunk = np.concatenate([chunk, np.repeat(chunk[:1], B - len(chunk), axis=0)])
    if beam_size == 1:
      tokens = greedy_decode(model, params, chunk, max_len=max_len, bos_id=bos_id, eos_id=eos_id)
    else:
      tokens, _ = beam_search(model, params, chunk, beam_size=beam_size, max_len=max_len,
                              alpha=alpha, bos_id=bos_id, eos_id=eos_id)
    out.append(np.asarray(tokens))
  return np.concatenate(out)[:N]


def match_scores(predicted_NL, targets_NT, weights_NT) -> dict:
  """Token accuracy (over the real target positions, EOS included) and exact match (every one
  of them right) of decoded sequences against the expected ones."""
  T = targets_NT.shape[1]
  pred_NT = np.asarray(predicted_NL)[:, :T]
  real_NT = np.asarray(weights_NT) > 0
  hit_NT = (pred_NT == np.asarray(targets_NT)) & real_NT
  return {"token_accuracy": float(hit_NT.sum() / real_NT.sum()),
          "exact_match": float((hit_NT == real_NT).all(axis=1).mean())}
