"""Bigram LM: the next token from the current token alone. The logits are a row of a V x V table."""

import flax.linen as nn


class Bigram(nn.Module):
  vocab_size: int

  @nn.compact
  def __call__(self, idx_BT, train: bool = False, decode: bool = False):
    del train, decode  # no dropout; no context, so decoding needs no cache
    table = nn.Embed(self.vocab_size, self.vocab_size, embedding_init=nn.initializers.normal(0.02),
                     name="table")
    return table(idx_BT)  # (B, T, V)
