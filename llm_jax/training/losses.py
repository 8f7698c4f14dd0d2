"""The loss factory: the loop trains whatever `make_loss_fn` returns, without knowing the model.

A batch is a dict of arrays: the model's inputs under `input_keys`, `targets` (B, T) and, for
padded data, `weights` (B, T) with 0 at padding; packed conversations add `positions` and
`segments` (B, T), from which each row's attention mask is built (data/chat.py). A language
model takes ('inputs',); the encoder-decoder takes ('inputs', 'decoder_inputs').
"""

import jax.numpy as jnp
import optax

from llm_jax.data.chat import segment_mask


def cross_entropy(logits_BTV, targets_BT, weights_BT=None):
  """Mean token cross-entropy over positions with weight > 0; computed in float32."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BTV.astype(jnp.float32), targets_BT)
  if weights_BT is None:
    return losses_BT.mean()
  return (losses_BT * weights_BT).sum() / jnp.maximum(weights_BT.sum(), 1.0)


def make_loss_fn(model, input_keys=("inputs",)):
  """loss_fn(params, batch, rng, train) -> scalar mean loss. rng feeds dropout when train=True."""

  def loss_fn(params, batch, rng, train: bool):
    inputs = [batch[k] for k in input_keys]
    rngs = {"dropout": rng} if train else {}
    packed = {}
    if "segments" in batch:  # packed conversations (data/chat.py): each attends to itself alone
      packed = {"positions_BT": batch["positions"],
                "mask_BTT": segment_mask(batch["positions"], batch["segments"])}
    logits = model.apply({"params": params}, *inputs, train=train, rngs=rngs, **packed)
    return cross_entropy(logits, batch["targets"], batch.get("weights"))

  return loss_fn
