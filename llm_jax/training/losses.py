"""The loss factory: the loop trains whatever `make_loss_fn` returns, without knowing the model.

A batch is a dict of arrays: the model's inputs under `input_keys`, `targets` (B, T) and, for
padded data, `weights` (B, T) with 0 at padding; for rows of several documents masked apart
(data.packing='doc_mask', and packed conversations, data/chat.py) `segments` and `positions`
(B, T). A language model takes ('inputs',); the encoder-decoder takes ('inputs',
'decoder_inputs').

A mixture of experts (models/moe.py) adds its auxiliary losses here: while training, its router
statistics come back from the model as a mutable collection, the loss gains the weighted
load-balancing and z-losses, and the loss function returns (loss, aux): aux['metrics'] go to the
step's metrics (their 'loss' the cross-entropy alone), aux['moe'] the statistics. With
train.moe_bias_rate, `loss_fn.after_update(params, aux)` moves the balancing biases after each
update (steps.py calls it, outside the gradient).
"""

import jax.numpy as jnp
import optax

from llm_jax.data.packing import document_mask
from llm_jax.models import moe


def cross_entropy(logits_BTV, targets_BT, weights_BT=None):
  """Mean token cross-entropy over positions with weight > 0; computed in float32."""
  losses_BT = optax.softmax_cross_entropy_with_integer_labels(
      logits_BTV.astype(jnp.float32), targets_BT)
  if weights_BT is None:
    return losses_BT.mean()
  return (losses_BT * weights_BT).sum() / jnp.maximum(weights_BT.sum(), 1.0)


def make_loss_fn(model, input_keys=("inputs",)):
  """loss_fn(params, batch, rng, train) -> scalar mean loss; for a mixture of experts while
  training, (loss with its auxiliary losses, aux) (module docstring). rng feeds dropout when
  train=True."""
  cfg = getattr(model, "cfg", None)
  sparse = getattr(cfg, "moe_experts", 0) > 0

  def loss_fn(params, batch, rng, train: bool):
    inputs = [batch[k] for k in input_keys]
    rngs = {"dropout": rng} if train else {}
    packed = {}
    if "segments" in batch:  # doc_mask packing, conversations: each token sees its own document
      packed = dict(positions_BT=batch["positions"], mask_BTT=document_mask(batch["segments"]))
    if not (sparse and train):
      logits = model.apply({"params": params}, *inputs, train=train, rngs=rngs, **packed)
      return cross_entropy(logits, batch["targets"], batch.get("weights"))
    logits, state = model.apply({"params": params}, *inputs, train=train, rngs=rngs,
                                mutable=[moe.MOE_STATS], **packed)
    loss = cross_entropy(logits, batch["targets"], batch.get("weights"))
    extra, metrics = moe.loss_terms(state[moe.MOE_STATS], cfg.moe_aux_loss, cfg.moe_z_loss)
    return loss + extra, {"metrics": {**metrics, "loss": loss}, "moe": state[moe.MOE_STATS]}

  if sparse and cfg.moe_bias_rate > 0:
    loss_fn.after_update = lambda params, aux: moe.balance(params, aux["moe"], cfg.moe_bias_rate)
  return loss_fn
