"""Building blocks shared by every model: positions, the feed-forward net, and the transformer block.

Shape letters: B batch, T query length, S key/value length, C model width (n_embd), V vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.models.attention import MultiHeadAttention
from llm_jax.models.dropout import Dropout


def gelu(x):
  """The exact GELU, x * Phi(x), as PyTorch's default and nanoGPT's. Written with erf: flax's
  nn.gelu(approximate=False) uses erfc, the same function to 1e-6 but twice as slow on CPU."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


ACTIVATIONS = {"relu": nn.relu, "gelu": gelu}
# LayerNorm epsilon as PyTorch's default (flax's is 1e-6)
LN_EPS = 1e-5


def sinusoidal_table(max_len: int, d: int) -> np.ndarray:
  """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)) (Vaswani et al. 3.5)."""
  pos = np.arange(max_len)[:, None]  # (L, 1)
  inv_freq = 1.0 / (10000.0 ** (np.arange(0, d, 2) / d))  # (ceil(d/2),)
  table = np.zeros((max_len, d), np.float32)
  table[:, 0::2] = np.sin(pos * inv_freq)
  table[:, 1::2] = np.cos(pos * inv_freq[: d // 2])
  return table  # (L, C)


class PositionalEncoding(nn.Module):
  """Adds a position vector to each token vector: learned (a table of max_len x C) or fixed sinusoidal."""
  kind: str  # 'learned' | 'sinusoidal'
  max_len: int

  @nn.compact
  def __call__(self, x_BTC, positions_T):
    C = x_BTC.shape[-1]
    if self.kind == "learned":
      table = self.param("table", nn.initializers.normal(0.02), (self.max_len, C))
    else:
      table = jnp.asarray(sinusoidal_table(self.max_len, C))
    return x_BTC + jnp.take(table, positions_T, axis=0).astype(x_BTC.dtype)[None]


class FeedForward(nn.Module):
  """Position-wise FFN: Dense(4C) -> activation -> Dense(C) -> dropout."""
  hidden: int
  activation: str
  dropout: float
  use_bias: bool
  out_init_std: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_BTC, train: bool):
    B, T, C = x_BTC.shape
    x_NC = x_BTC.reshape(B * T, C)
    h_NF = nn.Dense(self.hidden, use_bias=self.use_bias, dtype=self.dtype,
                    kernel_init=nn.initializers.normal(0.02), name="fc")(x_NC)
    h_NF = ACTIVATIONS[self.activation](h_NF)
    y_NC = nn.Dense(C, use_bias=self.use_bias, dtype=self.dtype,
                    kernel_init=nn.initializers.normal(self.out_init_std), name="proj")(h_NF)
    return Dropout(self.dropout)(y_NC.reshape(B, T, C), deterministic=not train)


class Block(nn.Module):
  """One transformer layer: self-attention, optional cross-attention, FFN; each a residual sub-layer.

  norm='pre':  x = x + Dropout(f(LN(x)))   (GPT-2, nanoGPT)
  norm='post': x = LN(x + Dropout(f(x)))   (the original Transformer)
  The GPT block, the encoder layer and the decoder layer (cross=True) are all this module.
  """
  n_head: int
  dropout: float
  norm: str
  activation: str
  use_bias: bool
  # std of the init of the projections that write into the residual stream (GPT-2: 0.02/sqrt(2L))
  out_init_std: float = 0.02
  cross: bool = False
  dtype: jnp.dtype = jnp.float32
  # self-attention's implementation: 'einsum' | 'dot_product' (see MultiHeadAttention)
  attention: str = "einsum"

  def _sublayer(self, x, f, name):
    ln = nn.LayerNorm(epsilon=LN_EPS, use_bias=self.use_bias, name=f"ln_{name}")
    if self.norm == "pre":
      return x + f(ln(x))
    return ln(x + f(x))

  @nn.compact
  def __call__(self, x_BTC, mask, train: bool, memory_BSC=None, memory_mask=None, decode=False):
    attn = lambda name, **kw: MultiHeadAttention(
        n_head=self.n_head, dropout=self.dropout, use_bias=self.use_bias,
        out_init_std=self.out_init_std, dtype=self.dtype, name=name, **kw)
    x_BTC = self._sublayer(
        x_BTC, lambda h: attn("attn", attention=self.attention)(h, h, mask, train, decode=decode),
        "attn")
    if self.cross:
      x_BTC = self._sublayer(
          x_BTC, lambda h: attn("cross_attn")(h, memory_BSC, memory_mask, train), "cross")
    ffn = FeedForward(4 * x_BTC.shape[-1], self.activation, self.dropout, self.use_bias,
                      self.out_init_std, self.dtype, name="ffn")
    return self._sublayer(x_BTC, lambda h: ffn(h, train), "ffn")
