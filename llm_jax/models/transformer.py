"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    source (B, S) -> embed * sqrt(C) + positions -> n_layer encoder Blocks -> memory (B, S, C)
    decoder input (B, T) -> embed * sqrt(C) + positions -> n_layer decoder Blocks (attending to
        the memory) -> linear -> logits (B, T, V)

Each stack is the `Stack` of GPT (layers.py): an encoder Block is bidirectional self-attention +
FFN; a decoder Block is causal self-attention, cross-attention (queries from the decoder, keys and
values from the memory) + FFN. So every switch of GPT applies here too (norm, norm_type, pos,
activation, n_kv_head, qk_norm, attention, scan_layers, ...), but scale_embeddings: the embeddings
are always scaled (below). Rotary positions rotate the self-attentions of both stacks, not the
cross-attention; pos='none' is refused (the bidirectional encoder could not tell the source's
order).

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
from llm_jax.models.axes import param_init
from llm_jax.models.layers import Stack
from llm_jax.models.model_config import ModelConfig


class Transformer(nn.Module):
  # n_layer is the layers of each stack; max_len the size of the positional tables (the longest
  # source, and the longest decoder input); pad_id the token id of padding in both sequences
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    embed = lambda: nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=param_init(
        nn.initializers.normal(cfg.n_embd ** -0.5), "vocab", "embed"))
    self.src_embed = embed()
    self.tgt_embed = self.src_embed if cfg.share_embeddings else embed()
    stack = lambda embed, cross: Stack(cfg, embed, math.sqrt(cfg.n_embd),
                                       out_init_std=cfg.n_embd ** -0.5, cross=cross)
    self.encoder = stack(self.src_embed, cross=False)
    self.decoder = stack(self.tgt_embed, cross=True)
    if not cfg.tie_embeddings:
      self.head = nn.Dense(cfg.vocab_size, use_bias=False,
                           kernel_init=param_init(nn.initializers.normal(0.02), "embed", "vocab"))

  def encode(self, inputs_BS, train: bool = False):
    """(B, S) source tokens -> memory (B, S, C). Every position attends to every real one."""
    mask_B11S = (inputs_BS != self.cfg.pad_id)[:, None, None, :]
    return self.encoder(inputs_BS, mask_B11S, train)

  def decode(self, decoder_inputs_BT, memory_BSC, src_valid_BS, train: bool = False,
             decode: bool = False):
    """(B, T) decoder input, the memory, its validity (False at source padding) -> logits (B, T, V).

    With decode=True the T tokens continue the sequence held in the cache (one at a time when
    decoding); the attention then builds the causal mask over the cache itself.
    """
    T = decoder_inputs_BT.shape[1]
    mask_B1TT = None if decode else (
        causal_mask(T) & (decoder_inputs_BT != self.cfg.pad_id)[:, None, None, :])
    x_BTC = self.decoder(decoder_inputs_BT, mask_B1TT, train, memory_BSC,
                         src_valid_BS[:, None, None, :], decode=decode)
    x_BTC = x_BTC.astype(jnp.float32)
    if self.cfg.tie_embeddings:
      return self.tgt_embed.attend(x_BTC)
    return self.head(x_BTC)

  def __call__(self, inputs_BS, decoder_inputs_BT, train: bool = False):
    """Teacher forcing: logits (B, T, V) for every decoder position at once."""
    memory_BSC = self.encode(inputs_BS, train)
    return self.decode(decoder_inputs_BT, memory_BSC, inputs_BS != self.cfg.pad_id, train)
