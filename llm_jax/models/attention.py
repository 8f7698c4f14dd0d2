"""Multi-head scaled dot-product attention, the one attention of every model.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V,   per head, heads concatenated, then projected.

Self-attention (no `memory_BSC`) takes queries, keys and values from x (one fused QKV projection);
cross-attention takes the queries from x (the decoder states) and the keys and values from
`memory_BSC` (the encoder output). `mask` is boolean, broadcastable to (B, H, T, S), True where a
query may attend to a key.

Grouped-query attention (cfg.n_kv_head < n_head; Ainslie et al. 2023): the keys and values have
n_kv_head heads, each shared by n_head / n_kv_head consecutive query heads (query head h reads
key/value head h // G), so their projection is separate from the queries' ('query' and 'kv', as
cross-attention's); n_kv_head = 1 is multi-query attention (Shazeer 2019).

cfg.qk_norm: an RMSNorm over each head's query and key vectors (one scale of head size each, shared
by the heads), before the rotary positions. cfg.pos == 'rope' (Su et al. 2021): self-attention
rotates each head's queries and keys by their positions, so that q_t . k_s depends on t - s only;
the pairs rotated are dimensions (i, i + D/2), as Llama's `rotate_half`. Cross-attention rotates
nothing (the memory's positions and the decoder's are not one sequence).

With decode=True (self-attention only) keys and values are kept in the linen 'cache' collection:
the call that creates the cache (model.init with decode=True) fixes its length from the input, and
each later call appends its T positions at `index` and attends causally over everything cached.
The cache holds n_kv_head heads, and the keys rotated: the new positions start at `index`.

Sliding windows (model.attn_window; layers.layer_windows gives each layer's): a query sees the
keys less than `window` positions behind it (window_mask, AND-ed with the given mask). A windowed
model's cache is a ring buffer (`_update_cache`), so that decoding goes on past its length.
Value embeddings (model.value_embeddings): a per-token vector added to the values, times the
learned scalar 've_lambda'.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models import precision
from llm_jax.models.axes import param_init
from llm_jax.models.dropout import Dropout, may_drop
from llm_jax.models.model_config import ModelConfig


def causal_mask(T: int, S: int | None = None, offset=0):
  """(1, 1, T, S) boolean: query t (at absolute position offset + t) sees keys at positions <= it."""
  S = T if S is None else S
  q_pos = offset + jnp.arange(T)[:, None]
  return (jnp.arange(S)[None, :] <= q_pos)[None, None]


def window_mask(q_pos, k_pos, window):
  """Sliding-window attention (model.attn_window): True where key position k_pos is among the
  last `window` positions up to query position q_pos (q - k < window; the causal mask keeps
  k <= q). q_pos (T,) and k_pos (S,), or each (B, T) / (B, S): (1, 1, T, S) or (B, 1, T, S).
  `window` may be traced (one per scanned layer)."""
  keep = (q_pos[..., :, None] - k_pos[..., None, :]) < window
  return keep[None, None] if keep.ndim == 2 else keep[:, None]


def rope(x_BTHD, positions, theta: float):
  """Rotates each pair of dimensions (i, i + D/2) of every head by the angle
  position / theta^(2i/D): x -> x cos + rotate_half(x) sin, computed in float32. positions: (T,),
  or (B, T) (each row its own, as packed sequences have them)."""
  D = x_BTHD.shape[-1]
  inv_freq = 1.0 / (theta ** (np.arange(0, D, 2, dtype=np.float32) / D))  # (D/2,)
  angles_TD = jnp.tile(positions.astype(jnp.float32)[..., None] * inv_freq, 2)  # ([B,] T, D)
  cos, sin = jnp.cos(angles_TD)[..., None, :], jnp.sin(angles_TD)[..., None, :]  # ([B,] T, 1, D)
  x = x_BTHD.astype(jnp.float32)
  half = jnp.concatenate([-x[..., D // 2:], x[..., :D // 2]], axis=-1)  # rotate_half
  return (x * cos + half * sin).astype(x_BTHD.dtype)


class MultiHeadAttention(nn.Module):
  """Reads cfg's n_head, n_kv_head, qk_norm, pos, rope_theta, dropout, use_bias, dtype and
  `attention`, the implementation: 'einsum' (the formula above written out) | 'dot_product'
  (jax.nn.dot_product_attention: XLA's fused kernel where the backend has one, e.g. cuDNN on
  GPU)."""
  cfg: ModelConfig
  # std of the output projection's init (it writes into the residual stream)
  out_init_std: float

  @nn.compact
  def __call__(self, x_BTC, mask, train: bool, memory_BSC=None, decode: bool = False,
               last_query: bool = False, positions=None, window=None, value_embed_BTC=None):
    """Self-attention over x_BTC, or (memory_BSC given) cross-attention from x_BTC to it.
    last_query: the last position's query alone attends (over every key): (B, 1, C) out.
    positions: the rotary positions, (T,) or (B, T); default 0..T-1, after the cache's index.
    window: each query sees at most the last `window` positions (window_mask; None: all of
    them); with decode the cache is then a ring (_update_cache). value_embed_BTC: (B, T, K D)
    added to the values, times a learned scalar 've_lambda' (model.value_embeddings)."""
    cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    B, T, C = x_BTC.shape
    H, K = cfg.n_head, cfg.n_kv_head
    D = C // H
    # kernels (C, *shape) and biases (*shape), their axes named (axes.py)
    dense = lambda shape, axes, name: nn.DenseGeneral(
        shape, use_bias=cfg.use_bias, dtype=dtype, dot_general=precision.dot_general(dtype),
        name=name,
        kernel_init=param_init(nn.initializers.normal(0.02), "embed", *axes),
        bias_init=param_init(nn.initializers.zeros, *axes))
    # the projections see (rows, C): XLA's CPU backend lays out their gradients far better in 2-D
    x_NC = x_BTC.reshape(B * T, C)
    if memory_BSC is not None and decode:
      raise ValueError("decode=True keeps a self-attention's keys and values; cross-attention "
                       "recomputes them from the memory")
    if memory_BSC is None and K == H:
      qkv_N3HD = dense((3, H, D), ("qkv", "heads", "head_dim"), "qkv")(x_NC)
      q_BTHD, k_BSKD, v_BSKD = jnp.unstack(qkv_N3HD.reshape(B, T, 3, H, D), axis=2)
    else:
      kv_BSC = x_BTC if memory_BSC is None else memory_BSC
      S = kv_BSC.shape[1]
      q_BTHD = dense((H, D), ("heads", "head_dim"), "query")(x_NC).reshape(B, T, H, D)
      kv_M2KD = dense((2, K, D), ("qkv", "kv_heads", "head_dim"), "kv")(
          kv_BSC.reshape(B * S, C))
      k_BSKD, v_BSKD = jnp.unstack(kv_M2KD.reshape(B, S, 2, K, D), axis=2)
    if value_embed_BTC is not None:  # modded-nanogpt's value embeddings: v + lambda ve(token)
      lam = self.param("ve_lambda", param_init(nn.initializers.constant(0.5)), ())
      v_BSKD = v_BSKD + (lam * value_embed_BTC).reshape(B, T, K, D).astype(v_BSKD.dtype)

    if cfg.qk_norm:
      head_norm = lambda name: nn.RMSNorm(
          epsilon=cfg.norm_eps, name=name,
          scale_init=param_init(nn.initializers.ones, "head_dim"))
      q_BTHD = head_norm("q_norm")(q_BTHD)
      k_BSKD = head_norm("k_norm")(k_BSKD)
    if decode:
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    if cfg.pos == "rope" and memory_BSC is None:  # positions continue from the cache's index
      if positions is None:
        positions = jnp.arange(T) + (index.value if decode else 0)
      q_BTHD = rope(q_BTHD, positions, cfg.rope_theta)
      k_BSKD = rope(k_BSKD, positions, cfg.rope_theta)
    # the keys and values below, laid out as `kv` says: (B, S, K, D), or the cache's (B, K, S, D)
    keys, values, kv = k_BSKD, v_BSKD, "bskd"
    if decode:
      keys, values, mask = self._update_cache(k_BSKD, v_BSKD, index, window, positions)
      kv = "bksd"
    elif window is not None:  # self-attention: the keys' positions are the queries'
      pos = jnp.arange(T) if positions is None else positions
      wm = window_mask(pos, pos, window)
      mask = wm if mask is None else mask & wm
    if last_query:
      q_BTHD, T = q_BTHD[:, -1:], 1
      mask = None if mask is None else mask[..., -1:, :]

    # jax.nn.dot_product_attention has no dropout on the weights: with dropout while training the
    # einsum path runs whatever was asked
    fused = cfg.attention == "dot_product" and not (train and may_drop(cfg.dropout))
    if fused and kv == "bksd":  # jax.nn.dot_product_attention takes (B, S, K, D)
      keys, values, kv = keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3), "bskd"
    if fused:  # it groups the query heads as below
      out_BTHD = jax.nn.dot_product_attention(q_BTHD, keys, values, mask=mask)
    else:  # query head h = k G + g reads key/value head k
      G, S = H // K, keys.shape[kv.index("s")]
      q_BTKGD = q_BTHD.reshape(B, T, K, G, D)
      scores_BKGTS = precision.einsum(f"btkgd,{kv}->bkgts", q_BTKGD, keys, dtype) / jnp.sqrt(
          jnp.float32(D))
      scores_BHTS = scores_BKGTS.reshape(B, H, T, S).astype(jnp.float32)
      if mask is not None:
        scores_BHTS = jnp.where(mask, scores_BHTS, jnp.finfo(jnp.float32).min)
      probs_BHTS = jax.nn.softmax(scores_BHTS, axis=-1)
      probs_BHTS = Dropout(cfg.dropout, cfg.dropout_bits)(probs_BHTS, deterministic=not train)
      probs_BKGTS = probs_BHTS.reshape(B, K, G, T, S)
      if kv == "bksd":  # the cache: heads-major out, then transposed. XLA's CPU backend has no
        # bf16 x bf16 -> f32 kernel for this einsum written straight to (B, T, K, G, D)
        out_BKGTD = precision.einsum("bkgts,bksd->bkgtd", probs_BKGTS, values, dtype)
        out_BTHD = out_BKGTD.transpose(0, 3, 1, 2, 4).reshape(B, T, H, D)
      else:
        out_BTHD = precision.einsum("bkgts,bskd->btkgd", probs_BKGTS, values, dtype).reshape(
            B, T, H, D)
    y_NC = nn.DenseGeneral(
        C, axis=(-2, -1), use_bias=cfg.use_bias, dtype=dtype,
        dot_general=precision.dot_general(dtype), name="out",
        kernel_init=param_init(nn.initializers.normal(self.out_init_std), "heads", "head_dim",
                               "embed"),
        bias_init=param_init(nn.initializers.zeros, "norm"))(out_BTHD.reshape(B * T, H, D))
    drop = Dropout(cfg.dropout, cfg.dropout_bits)
    return drop(y_NC.reshape(B, T, C), deterministic=not train)

  def _update_cache(self, k_BTKD, v_BTKD, index, window=None, slots=None):
    """Writes the new keys/values at `index`; returns all cached ones, (B, K, L, D), and the causal
    mask over them. The cache is kept heads-major, (B, K, L, D): the attention's einsums batch
    over (B, K), and XLA's CPU backend would otherwise copy the whole cache into that layout at
    every decoded token (most of a batch-32 step's time at 256 slots).
    slots (B, T): each row's own positions instead (the batched engine: rows of different
    lengths), where its keys/values are written and up to which each query attends; a slot past
    the cache writes nothing (a window masks, the cache is no ring there). Otherwise a windowed
    model's cache (cfg.attn_window > 0) is a ring of L slots: position p is kept at
    slot p mod L, so decoding goes on past L with every layer's window at most L (a global
    layer's is max_len); T new positions at once must not wrap past keys they still need (the
    prompt's prefill from 0, then one token at a time, as decoding.generate does)."""
    creating = not self.has_variable("cache", "k")
    k_BKTD, v_BKTD = k_BTKD.transpose(0, 2, 1, 3), v_BTKD.transpose(0, 2, 1, 3)
    k_cache = self.variable("cache", "k", jnp.zeros, k_BKTD.shape, k_BKTD.dtype)
    v_cache = self.variable("cache", "v", jnp.zeros, v_BKTD.shape, v_BKTD.dtype)
    if creating:  # model.init(decode=True): the cache takes the input's length, nothing is written
      return k_BKTD, v_BKTD, None
    T, L = k_BTKD.shape[1], k_cache.value.shape[2]
    i = index.value
    if slots is not None and jnp.ndim(slots) == 2:
      rows_B1 = jnp.arange(k_BTKD.shape[0])[:, None]
      # (rows, :, slots) indexes (B, T) pairs: the updates are (B, T, K, D)
      k_cache.value = k_cache.value.at[rows_B1, :, slots].set(k_BTKD, mode="drop")
      v_cache.value = v_cache.value.at[rows_B1, :, slots].set(v_BTKD, mode="drop")
      index.value = i + T
      mask = (jnp.arange(L) <= slots[:, :, None])[:, None]
      if window is not None:
        mask = mask & window_mask(slots, jnp.arange(L)[None], window)
      return k_cache.value, v_cache.value, mask
    if self.cfg.attn_window > 0:
      slots_T = (i + jnp.arange(T)) % L
      k_cache.value = k_cache.value.at[:, :, slots_T].set(k_BKTD)
      v_cache.value = v_cache.value.at[:, :, slots_T].set(v_BKTD)
      index.value = i + T
      last = i + T - 1
      k_pos_S = last - (last - jnp.arange(L)) % L  # the position each slot holds (< 0: none yet)
      q_pos_T = i + jnp.arange(T)
      mask = (k_pos_S[None, :] >= 0) & (k_pos_S[None, :] <= q_pos_T[:, None])
      mask = mask[None, None] & window_mask(q_pos_T, k_pos_S, L if window is None else window)
      return k_cache.value, v_cache.value, mask
    k_cache.value = jax.lax.dynamic_update_slice_in_dim(k_cache.value, k_BKTD, i, axis=2)
    v_cache.value = jax.lax.dynamic_update_slice_in_dim(v_cache.value, v_BKTD, i, axis=2)
    index.value = i + T
    return k_cache.value, v_cache.value, causal_mask(T, L, offset=i)
