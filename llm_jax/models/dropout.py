"""Dropout whose rate may be a traced value, so a sweep can vmap one model over several rates, and
whose mask is drawn from as few random bits as asked.

A Bernoulli keep-mask from the 'dropout' rng, kept values scaled by 1 / keep, as flax's
nn.Dropout (which needs a Python float: it branches on `rate == 0`). Drawing the mask is most of
dropout's cost: jax.random.bernoulli turns one 32-bit threefry word into one float32 uniform per
element, and on a CPU the 10.7M model's attention masks alone then take seconds of a step
(experiments/perf). With bits=8 one 32-bit word gives four elements their bytes, and an element
is dropped when its byte is below round(rate * 256): the rate is rounded to a multiple of 1/256
(0.2 -> 0.1992) and the kept values are scaled by the rounded keep, so the expectation stays
exact. bits=16: two elements a word, the rate to 1/65536. bits=32: jax.random.bernoulli itself.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# the widths of the random integer an element's keep/drop is decided by (config.model.dropout_bits)
BITS = (8, 16, 32)


def may_drop(rate) -> bool:
  """False only for a Python 0: a traced rate (one per vmapped variant) may be anything."""
  return not (isinstance(rate, (int, float)) and rate == 0.0)


def random_uints(key, shape, bits: int):
  """Uniform unsigned integers of `bits` bits, shape `shape`: 32 // bits of them from each 32-bit
  word, packed along the last axis (so the leading axes, and their sharding, stay as they are)."""
  per_word = 32 // bits
  *lead, last = shape
  words = jax.random.bits(key, (*lead, -(-last // per_word)), jnp.uint32)
  if per_word == 1:
    return words
  small = jax.lax.bitcast_convert_type(words, jnp.dtype(f"uint{bits}"))  # (..., words, per_word)
  return small.reshape(*lead, -1)[..., :last]


class Dropout(nn.Module):
  rate: Any  # a float, or a traced scalar (one per vmapped variant)
  bits: int = 8  # see the module's docstring

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or not may_drop(self.rate):
      return x
    key = self.make_rng("dropout")
    if self.bits == 32:
      keep = 1.0 - self.rate
      mask = jax.random.bernoulli(key, keep, x.shape)
    else:
      levels = 2 ** self.bits
      threshold = jnp.round(jnp.asarray(self.rate, jnp.float32) * levels)  # dropped below it
      keep = 1.0 - threshold / levels
      mask = random_uints(key, x.shape, self.bits) >= threshold.astype(jnp.uint32)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))
