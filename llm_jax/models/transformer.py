"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    source (B, S) -> embed * sqrt(C) + positions -> n_layer encoder Blocks -> memory (B, S, C)
    decoder input (B, T) -> embed * sqrt(C) + positions -> n_layer decoder Blocks (attending to
        the memory) -> linear -> logits (B, T, V)

An encoder Block is bidirectional self-attention + FFN; a decoder Block is causal self-attention,
cross-attention (queries from the decoder, keys and values from the memory) + FFN. Both are the
shared `Block` (layers.py), so every switch of GPT applies here too (norm, pos, activation, ...).

Token id `pad_id` is padding in both sequences: no query ever attends to a padded key (source
padding in the encoder and in cross-attention, target padding in the decoder), so padding changes
nothing at the real positions. Padded query rows still compute something; the loss ignores them.

Embeddings are drawn with std 1/sqrt(C) and multiplied by sqrt(C) (paper, 3.4): the token signal
then has unit scale, like the sinusoidal positions. For the same reason the projections that write
into the residual stream (attention and FFN outputs) start with std 1/sqrt(C), not GPT's 0.02:
each sub-layer then adds a signal of the stream's own scale; at 0.02 it adds about a tenth of it,
and training sat on a plateau for hundreds of steps (measured on 'copy' and 'reverse').
`share_embeddings` uses one table for source and target tokens (one vocabulary serves both);
`tie_embeddings` reuses the target table as the output layer.

`encode` and `decode` are separate methods (model.apply(..., method='encode')) so that decoding
runs the encoder once per source, then the decoder one position at a time with decode=True: its
self-attention keys and values stay in the linen 'cache' collection (attention.py), and the
positions continue from the cache's `index`.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.models.attention import causal_mask
from llm_jax.models.dropout import Dropout
from llm_jax.models.layers import LN_EPS, Block, PositionalEncoding


class Stack(nn.Module):
  """Embedded tokens + positions through n_layer Blocks: the encoder, or the decoder (cross)."""
  embed: nn.Module  # the token embedding, owned by the Transformer (it may be shared)
  cross: bool
  n_layer: int
  n_head: int
  max_len: int
  dropout: float
  norm: str
  pos: str
  activation: str
  use_bias: bool
  dtype: str

  @nn.compact
  def __call__(self, tokens_BT, mask, train: bool, memory_BSC=None, memory_mask=None,
               decode: bool = False):
    T = tokens_BT.shape[1]
    dtype = jnp.dtype(self.dtype)
    if decode:  # positions continue from what the cache already holds
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      start = index.value
      index.value = start + T
    else:
      start = 0
    x_BTC = self.embed(tokens_BT) * math.sqrt(self.embed.features)
    x_BTC = PositionalEncoding(self.pos, self.max_len, name="pos")(x_BTC, start + jnp.arange(T))
    x_BTC = Dropout(self.dropout)(x_BTC, deterministic=not train).astype(dtype)
    for i in range(self.n_layer):
      x_BTC = Block(n_head=self.n_head, dropout=self.dropout, norm=self.norm,
                    activation=self.activation, use_bias=self.use_bias,
                    out_init_std=self.embed.features ** -0.5, cross=self.cross,
                    dtype=dtype, name=f"layer_{i}")(
                        x_BTC, mask, train, memory_BSC, memory_mask, decode=decode)
    if self.norm == "pre":  # post-norm sub-layers already end in a LayerNorm
      x_BTC = nn.LayerNorm(epsilon=LN_EPS, use_bias=self.use_bias, name="ln_f")(x_BTC)
    return x_BTC


class Transformer(nn.Module):
  vocab_size: int
  n_layer: int  # layers of each stack
  n_head: int
  n_embd: int
  # size of the positional tables: the longest source, and the longest decoder input
  max_len: int
  dropout: float = 0.0
  norm: str = "post"
  pos: str = "sinusoidal"
  activation: str = "relu"
  share_embeddings: bool = True
  tie_embeddings: bool = True
  use_bias: bool = True
  dtype: str = "float32"
  # the token id of padding (the seq2seq tokenizer's PAD)
  pad_id: int = 0

  def setup(self):
    embed = lambda: nn.Embed(self.vocab_size, self.n_embd,
                             embedding_init=nn.initializers.normal(self.n_embd ** -0.5))
    self.src_embed = embed()
    self.tgt_embed = self.src_embed if self.share_embeddings else embed()
    stack = lambda embed, cross: Stack(
        embed=embed, cross=cross, n_layer=self.n_layer, n_head=self.n_head, max_len=self.max_len,
        dropout=self.dropout, norm=self.norm, pos=self.pos, activation=self.activation,
        use_bias=self.use_bias, dtype=self.dtype)
    self.encoder = stack(self.src_embed, cross=False)
    self.decoder = stack(self.tgt_embed, cross=True)
    if not self.tie_embeddings:
      self.head = nn.Dense(self.vocab_size, use_bias=False,
                           kernel_init=nn.initializers.normal(0.02))

  def encode(self, inputs_BS, train: bool = False):
    """(B, S) source tokens -> memory (B, S, C). Every position attends to every real one."""
    mask_B11S = (inputs_BS != self.pad_id)[:, None, None, :]
    return self.encoder(inputs_BS, mask_B11S, train)

  def decode(self, decoder_inputs_BT, memory_BSC, src_valid_BS, train: bool = False,
             decode: bool = False):
    """(B, T) decoder input, the memory, its validity (False at source padding) -> logits (B, T, V).

    With decode=True the T tokens continue the sequence held in the cache (one at a time when
    decoding); the attention then builds the causal mask over the cache itself.
    """
    T = decoder_inputs_BT.shape[1]
    mask_B1TT = None if decode else (
        causal_mask(T) & (decoder_inputs_BT != self.pad_id)[:, None, None, :])
    x_BTC = self.decoder(decoder_inputs_BT, mask_B1TT, train, memory_BSC,
                         src_valid_BS[:, None, None, :], decode=decode)
    x_BTC = x_BTC.astype(jnp.float32)
    if self.tie_embeddings:
      return self.tgt_embed.attend(x_BTC)
    return self.head(x_BTC)

  def __call__(self, inputs_BS, decoder_inputs_BT, train: bool = False):
    """Teacher forcing: logits (B, T, V) for every decoder position at once."""
    memory_BSC = self.encode(inputs_BS, train)
    return self.decode(decoder_inputs_BT, memory_BSC, inputs_BS != self.pad_id, train)
