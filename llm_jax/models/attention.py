"""Multi-head scaled dot-product attention, the one attention of every model.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V,   per head, heads concatenated, then projected.

Self-attention (no `memory_BSC`) takes queries, keys and values from x (one fused QKV projection);
cross-attention takes the queries from x (the decoder states) and the keys and values from
`memory_BSC` (the encoder output). `mask` is boolean, broadcastable to (B, H, T, S), True where a
query may attend to a key.

With decode=True (self-attention only) keys and values are kept in the linen 'cache' collection:
the call that creates the cache (model.init with decode=True) fixes its length from the input, and
each later call appends its T positions at `index` and attends causally over everything cached.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax.models.dropout import Dropout, may_drop
from llm_jax.models.model_config import ModelConfig


def causal_mask(T: int, S: int | None = None, offset=0):
  """(1, 1, T, S) boolean: query t (at absolute position offset + t) sees keys at positions <= it."""
  S = T if S is None else S
  q_pos = offset + jnp.arange(T)[:, None]
  return (jnp.arange(S)[None, :] <= q_pos)[None, None]


class MultiHeadAttention(nn.Module):
  """Reads cfg's n_head, dropout, use_bias, dtype and `attention`, the implementation: 'einsum'
  (the formula above written out) | 'dot_product' (jax.nn.dot_product_attention: XLA's fused
  kernel where the backend has one, e.g. cuDNN on GPU)."""
  cfg: ModelConfig
  # std of the output projection's init (it writes into the residual stream)
  out_init_std: float

  @nn.compact
  def __call__(self, x_BTC, mask, train: bool, memory_BSC=None, decode: bool = False):
    """Self-attention over x_BTC, or (memory_BSC given) cross-attention from x_BTC to it."""
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    B, T, C = x_BTC.shape
    H = cfg.n_head
    D = C // H
    dense = lambda shape, name: nn.DenseGeneral(
        shape, use_bias=cfg.use_bias, dtype=dtype, kernel_init=nn.initializers.normal(0.02),
        name=name)
    # the projections see (rows, C): XLA's CPU backend lays out their gradients far better in 2-D
    x_NC = x_BTC.reshape(B * T, C)
    if memory_BSC is None:
      qkv_N3HD = dense((3, H, D), "qkv")(x_NC)
      q_BTHD, k_BSHD, v_BSHD = jnp.unstack(qkv_N3HD.reshape(B, T, 3, H, D), axis=2)
    else:
      if decode:
        raise ValueError("decode=True keeps a self-attention's keys and values; cross-attention "
                         "recomputes them from the memory")
      S = memory_BSC.shape[1]
      q_BTHD = dense((H, D), "query")(x_NC).reshape(B, T, H, D)
      kv_M2HD = dense((2, H, D), "kv")(memory_BSC.reshape(B * S, C))
      k_BSHD, v_BSHD = jnp.unstack(kv_M2HD.reshape(B, S, 2, H, D), axis=2)

    if decode:
      k_BSHD, v_BSHD, mask = self._update_cache(k_BSHD, v_BSHD)

    # jax.nn.dot_product_attention has no dropout on the weights: with dropout while training the
    # einsum path runs whatever was asked
    fused = cfg.attention == "dot_product" and not (train and may_drop(cfg.dropout))
    if fused:
      out_BTHD = jax.nn.dot_product_attention(q_BTHD, k_BSHD, v_BSHD, mask=mask)
    else:
      scores_BHTS = jnp.einsum("bthd,bshd->bhts", q_BTHD, k_BSHD) / jnp.sqrt(D).astype(dtype)
      scores_BHTS = scores_BHTS.astype(jnp.float32)
      if mask is not None:
        scores_BHTS = jnp.where(mask, scores_BHTS, jnp.finfo(jnp.float32).min)
      probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1)
      probs_BHTS = Dropout(cfg.dropout)(probs_BHTS, deterministic=not train)
      out_BTHD = jnp.einsum("bhts,bshd->bthd", probs_BHTS.astype(dtype), v_BSHD)
    y_NC = nn.DenseGeneral(C, axis=(-2, -1), use_bias=cfg.use_bias, dtype=dtype,
                           kernel_init=nn.initializers.normal(self.out_init_std),
                           name="out")(out_BTHD.reshape(B * T, H, D))
    return Dropout(cfg.dropout)(y_NC.reshape(B, T, C), deterministic=not train)

  def _update_cache(self, k_BTHD, v_BTHD):
    """Writes the new keys/values at `index`; returns all cached ones and the causal mask over them."""
    creating = not self.has_variable("cache", "k")
    k_cache = self.variable("cache", "k", jnp.zeros, k_BTHD.shape, k_BTHD.dtype)
    v_cache = self.variable("cache", "v", jnp.zeros, v_BTHD.shape, v_BTHD.dtype)
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if creating:  # model.init(decode=True): the cache takes the input's length, nothing is written
      return k_BTHD, v_BTHD, None
    T, L = k_BTHD.shape[1], k_cache.value.shape[1]
    i = index.value
    k_cache.value = jax.lax.dynamic_update_slice_in_dim(k_cache.value, k_BTHD, i, axis=1)
    v_cache.value = jax.lax.dynamic_update_slice_in_dim(v_cache.value, v_BTHD, i, axis=1)
    index.value = i + T
    return k_cache.value, v_cache.value, causal_mask(T, L, offset=i)
