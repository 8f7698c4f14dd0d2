"""GPT: a decoder-only transformer.

    tokens (B, T) -> token embedding + positions -> n_layer causal Blocks -> final LayerNorm -> head -> logits (B, T, V)

Every choice the textbooks disagree on is a field: norm placement, positional encoding, activation,
tied head, dropout, biases, compute dtype. With norm='post' every sub-layer already ends in a
LayerNorm, so the final LayerNorm is applied only with norm='pre' (as GPT-2 and the original paper).
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.models.attention import causal_mask
from llm_jax.models.dropout import Dropout
from llm_jax.models.layers import LN_EPS, Block, PositionalEncoding


class ScannedBlock(nn.Module):
  """A Block as the body of nn.scan: (x, mask) -> (x, None), the mask broadcast to every layer."""
  block: dict  # Block's fields
  train: bool
  decode: bool

  @nn.compact
  def __call__(self, x_BTC, mask):
    return Block(**self.block, name="block")(x_BTC, mask, self.train, decode=self.decode), None


class GPT(nn.Module):
  vocab_size: int
  n_layer: int
  n_head: int
  n_embd: int
  # size of the positional table: the longest context the model can see
  max_len: int
  dropout: float = 0.0
  norm: str = "pre"
  pos: str = "learned"
  activation: str = "gelu"
  tie_embeddings: bool = True
  use_bias: bool = False
  dtype: str = "float32"
  attention: str = "einsum"
  # token embeddings x sqrt(n_embd) before the positions are added (Vaswani et al. 3.4)
  scale_embeddings: bool = False
  # the blocks as one nn.scan: one block compiled once, parameters and KV cache stacked on a
  # leading layer axis (params['h'] instead of params['h_0'] ... ['h_{n_layer-1}'])
  scan_layers: bool = False

  @nn.compact
  def __call__(self, idx_BT, train: bool = False, decode: bool = False):
    B, T = idx_BT.shape
    dtype = jnp.dtype(self.dtype)
    wte = nn.Embed(self.vocab_size, self.n_embd, embedding_init=nn.initializers.normal(0.02),
                   name="wte")
    if decode:  # positions continue from what the cache already holds
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      start = index.value
      index.value = start + T
      mask = None  # the attention builds the causal mask over its cache
    else:
      start = 0
      mask = causal_mask(T)  # (1, 1, T, T)
    x_BTC = wte(idx_BT)  # (B, T, C)
    if self.scale_embeddings:
      x_BTC = x_BTC * math.sqrt(self.n_embd)
    x_BTC = PositionalEncoding(self.pos, self.max_len, name="wpe")(x_BTC, start + jnp.arange(T))
    x_BTC = Dropout(self.dropout)(x_BTC, deterministic=not train).astype(dtype)
    block = dict(n_head=self.n_head, dropout=self.dropout, norm=self.norm,
                 activation=self.activation, use_bias=self.use_bias,
                 out_init_std=0.02 / math.sqrt(2 * self.n_layer), dtype=dtype,
                 attention=self.attention)
    if self.scan_layers:  # each layer its own parameters, cache and dropout key
      stack = nn.scan(ScannedBlock, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                      length=self.n_layer)
      x_BTC, _ = stack(block, train, decode, name="h")(x_BTC, mask)
    else:
      for i in range(self.n_layer):
        x_BTC = Block(**block, name=f"h_{i}")(x_BTC, mask, train, decode=decode)
    if self.norm == "pre":
      x_BTC = nn.LayerNorm(epsilon=LN_EPS, use_bias=self.use_bias, name="ln_f")(x_BTC)
    if self.tie_embeddings:
      logits_BTV = wte.attend(x_BTC.astype(jnp.float32))
    else:
      logits_BTV = nn.Dense(self.vocab_size, use_bias=False, kernel_init=nn.initializers.normal(0.02),
                            name="head")(x_BTC.astype(jnp.float32))
    return logits_BTV
