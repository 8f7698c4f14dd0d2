"""Bigram LM: the next token from the current token alone. The logits are a row of a V x V table."""

import flax.linen as nn

from llm_jax.models.axes import param_init
from llm_jax.models.model_config import ModelConfig


class Bigram(nn.Module):
  cfg: ModelConfig  # only vocab_size matters

  @nn.compact
  def __call__(self, idx_BT, train: bool = False, decode: bool = False, last_only: bool = False,
               positions_BT=None, mask_BTT=None):
    # no dropout; no context: decoding needs no cache, packed sequences neither positions nor mask
    del train, decode, positions_BT, mask_BTT
    if last_only:  # the last position's logits alone (B, 1, V)
      idx_BT = idx_BT[:, -1:]
    V = self.cfg.vocab_size
    # a row per token: its logits, which is its embedding (of width V)
    table = nn.Embed(V, V, embedding_init=param_init(nn.initializers.normal(0.02), "vocab",
                                                     "embed"), name="table")
    return table(idx_BT)  # (B, T, V)
