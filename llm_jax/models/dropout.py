"""Dropout whose rate may be a traced value, so a sweep can vmap one model over several rates.

The same computation as flax's nn.Dropout (a Bernoulli keep-mask from the 'dropout' rng, kept
values scaled by 1 / keep), which needs a Python float: it branches on `rate == 0`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def may_drop(rate) -> bool:
  """False only for a Python 0: a traced rate (one per vmapped variant) may be anything."""
  return not (isinstance(rate, (int, float)) and rate == 0.0)


class Dropout(nn.Module):
  rate: Any  # a float, or a traced scalar (one per vmapped variant)

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or not may_drop(self.rate):
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))
