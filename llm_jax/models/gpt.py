"""GPT: a decoder-only transformer, the shared Stack (layers.py) and a head.

    tokens (B, T) -> token embedding + positions -> n_layer causal Blocks -> final norm -> head
        -> logits (B, T, V)

Every choice the textbooks disagree on is a field of its ModelConfig: norm placement and kind
(LayerNorm, RMSNorm), positional encoding (learned, sinusoidal, rotary, none), activation (and the
gated FFNs, SwiGLU and GeGLU), the FFN's width, grouped-query attention, QK-norm, tied head,
dropout, biases, compute dtype, the attention's implementation, scaled embeddings, scanned layers.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from llm_jax.models.attention import causal_mask
from llm_jax.models.axes import param_init
from llm_jax.models.layers import Stack
from llm_jax.models.model_config import ModelConfig


class GPT(nn.Module):
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd,
                        embedding_init=param_init(nn.initializers.normal(0.02), "vocab", "embed"))
    # token embeddings x sqrt(n_embd) before the positions are added (Vaswani et al. 3.4)
    scale = math.sqrt(cfg.n_embd) if cfg.scale_embeddings else 1.0
    # model.zero_init_proj: the projections into the residual stream start at zero, so each
    # block starts as the identity (modded-nanogpt, nanochat)
    out_std = 0.0 if cfg.zero_init_proj else 0.02 / math.sqrt(2 * cfg.n_layer)
    self.stack = Stack(cfg, self.wte, scale, out_init_std=out_std, pos_name="wpe",
                       block_name="h")
    # the stack's parameters sit beside wte and head, not under a 'stack' key: GPT's parameter
    # names are those of its checkpoints from before the stack was shared with the transformer
    nn.share_scope(self, self.stack)
    if not cfg.tie_embeddings:
      self.head = nn.Dense(cfg.vocab_size, use_bias=False,
                           kernel_init=param_init(nn.initializers.normal(0.02), "embed", "vocab"))

  def __call__(self, idx_BT, train: bool = False, decode: bool = False, last_only: bool = False,
               positions_BT=None, mask_BTT=None):
    """(B, T, V) logits; with last_only (B, 1, V), the last position's alone: the one a decoding
    step samples from. Then the last Block's queries, FFN and the head see that position only.
    Packed sequences: positions_BT (each token's position) and mask_BTT (True where token t may
    attend to token s) instead of one causal sequence from 0 a row."""
    # decoding: the attention builds the causal mask over its cache
    mask = None if decode else causal_mask(idx_BT.shape[1])  # (1, 1, T, T)
    if mask_BTT is not None:
      mask = mask_BTT[:, None]  # (B, 1, T, T): one mask for every head
    x_BTC = self.stack(idx_BT, mask, train, decode=decode, last_only=last_only,
                       positions_BT=positions_BT).astype(jnp.float32)
    logits_BTV = self.wte.attend(x_BTC) if self.cfg.tie_embeddings else self.head(x_BTC)
    cap = self.cfg.logit_softcap
    if cap:  # model.logit_softcap: cap tanh(logits / cap), in (-cap, cap) (Gemma 2, modded-nanogpt)
      logits_BTV = cap * jnp.tanh(logits_BTV / cap)
    return logits_BTV  # (B, T, V)
