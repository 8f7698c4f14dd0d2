"""The optimizer (train.optimizer) and its learning-rate schedule (train.schedule), with weight
decay on weights and embeddings (not biases or norm scales) and global-norm clipping.

    adamw      AdamW (Loshchilov & Hutter), nanoGPT's: beta1, beta2, decoupled weight_decay
    lion       Lion (Chen et al. 2023): the sign of an interpolated momentum; beta1, beta2,
               weight_decay. Its updates have unit size per element, so it wants a learning
               rate about 3-10x below AdamW's and a weight decay as much above
    adafactor  Adafactor (Shazeer & Stern 2018): the second moment of a matrix factored into its
               row and column means (optax.scale_by_factored_rms, decay 1 - t^-0.8), updates
               clipped to RMS 1, no momentum, no scaling by the parameters' size (so its
               learning rate is on AdamW's scale); beta1 and beta2 unread
    muon       Muon (Jordan 2024; Liu et al. 2025): the Nesterov momentum of each matrix of the
               blocks orthogonalized by muon_ns_steps Newton-Schulz iterations; every other
               parameter (embeddings, head, norms, biases) AdamW, as nanochat and the Muon paper
    sgd        SGD with momentum (Nesterov by default), weight decay decoupled as AdamW's

Every weight decay is decoupled and multiplied by the learning rate (optax's convention), and
masked by name (decay_mask). The schedules (lr_schedule) share nanoGPT's linear warmup.
"""

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers
# the orthogonalized update of an (in x out) matrix scaled by sqrt(max(in, out)) x consistent_rms
# (Liu et al. 2025: an RMS like AdamW's, so that AdamW's learning rate and weight decay carry
# over), or with consistent_rms None by sqrt(max(1, out / in)) (Jordan's). optax >= 0.2.7 has it
# (its scale_by_muon orthogonalizes only; 0.2.6's also scaled by the latter), outside
# optax.contrib's exports
from optax.contrib._muon import scale_by_shape

OPTIMIZERS = ("adamw", "lion", "adafactor", "muon", "sgd")
SCHEDULES = ("cosine", "wsd", "linear", "constant")


def warmup_steps(cfg) -> int:
  """cfg.warmup_steps, cut to lr_decay_steps where a run is no longer than its warmup (a short
  smoke run of the baby config: lr_decay_steps follows max_steps). The training loop says so."""
  return min(cfg.warmup_steps, cfg.lr_decay_steps)


def lr_schedule(cfg):
  """cfg: config.train. Linear warmup to learning_rate, then cfg.schedule to min_lr at
  lr_decay_steps, then min_lr. `it` is the number of updates done so far:

    it < warmup:              lr * (it + 1) / (warmup + 1)   (nanoGPT's get_lr, for every schedule)
    warmup <= it <= decay, with r = (it - warmup) / (decay - warmup):
      cosine     min_lr + 0.5 * (1 + cos(pi r)) * (lr - min_lr)                       (nanoGPT)
      linear     lr - r * (lr - min_lr)
      wsd        lr until the last decay_fraction of (warmup, decay], then linearly to min_lr
                 (warmup-stable-decay: Zhai et al. 2022, Hu et al. 2024 (MiniCPM), Hägele et al.
                 2024); the decay starts at decay - round(decay_fraction * (decay - warmup))
      constant   lr (min_lr unread)
    it > decay:               min_lr (constant: lr)
  The rates may be traced (the vectorized runs feed each run's own); the steps are Python ints.
  """
  lr, min_lr, kind = cfg.learning_rate, cfg.min_lr, cfg.schedule
  warmup, decay = warmup_steps(cfg), cfg.lr_decay_steps
  cool_start = decay - round(cfg.decay_fraction * (decay - warmup))  # wsd

  def schedule(it):
    it = jnp.asarray(it, jnp.float32)
    warm = lr * (it + 1) / (warmup + 1)
    if kind == "constant":
      return jnp.where(it < warmup, warm, lr)
    if kind == "wsd":
      ratio = jnp.clip((it - cool_start) / max(decay - cool_start, 1), 0.0, 1.0)
    else:
      ratio = jnp.clip((it - warmup) / max(decay - warmup, 1), 0.0, 1.0)
    if kind == "cosine":
      after = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)
    else:  # linear, wsd
      after = lr - ratio * (lr - min_lr)
    return jnp.where(it < warmup, warm, after)

  return schedule


def decay_mask(params):
  """Weight decay on nanoGPT's 'tensors of rank >= 2' (matrices, embeddings), not on biases and
  norm scales; told apart by name, so that parameters stacked on a layer axis
  (model.scan_layers) keep the rule."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: getattr(path[-1], "key", None) not in ("bias", "scale"), params)


# Muon's matrices: the kernels of the blocks' projections, by the name of their module, with
# the axes that Newton-Schulz sees as (in, out). The attention's DenseGeneral kernels are not
# 2-D: 'qkv' (C, 3, H, D) and 'kv' (C, 2, K, D) are three and two matrices C x (H D), the
# fused axis a batch axis (each of query, key and value orthogonalized alone, as models with
# separate projections do); 'query' (C, H, D) is C x (H D); 'out' (H, D, C) is (H D) x C. The
# axes count from the end, so that a leading layer axis (model.scan_layers) is a batch axis
# too: each layer's matrix is orthogonalized alone. Every other kernel is a Dense (in, out).
_MUON_AXES = {
    "qkv": MuonDimensionNumbers(reduction_axis=-4, output_axis=(-2, -1)),
    "kv": MuonDimensionNumbers(reduction_axis=-4, output_axis=(-2, -1)),
    "query": MuonDimensionNumbers(reduction_axis=-3, output_axis=(-2, -1)),
    "out": MuonDimensionNumbers(reduction_axis=(-3, -2), output_axis=-1),
}
_DENSE = MuonDimensionNumbers(reduction_axis=-2, output_axis=-1)


def _key(entry):
  return getattr(entry, "key", None)


def muon_dimension_numbers(params):
  """{parameter: its MuonDimensionNumbers, or None (AdamW's)}: every 'kernel' but the head's
  (the top-level 'head'; the embeddings, positions, norms and biases are not kernels)."""
  def dims(path, _):
    if _key(path[-1]) != "kernel" or _key(path[0]) == "head":
      return None
    return _MUON_AXES.get(_key(path[-2]), _DENSE)
  return jax.tree_util.tree_map_with_path(dims, params)


def muon_labels(params):
  return jax.tree.map(lambda d: "adamw" if d is None else "muon",
                      muon_dimension_numbers(params), is_leaf=lambda d: d is None or isinstance(
                          d, MuonDimensionNumbers))


def _muon_dims_of(updates):
  """The dimension numbers of the Muon part's (masked) updates: optax's MaskedNode where AdamW's."""
  dims = muon_dimension_numbers(updates)
  return jax.tree.map(lambda u, d: optax.MaskedNode() if d is None else d, updates, dims,
                      is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _adamw(cfg, schedule):
  return optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, eps=1e-8,
                     weight_decay=cfg.weight_decay, mask=decay_mask)


def _muon(cfg, schedule):
  muon = optax.chain(
      optax.contrib.scale_by_muon(ns_steps=cfg.muon_ns_steps, beta=cfg.momentum,
                                  nesterov=cfg.nesterov, weight_dimension_numbers=_muon_dims_of),
      scale_by_shape(_muon_dims_of, cfg.muon_consistent_rms or None),
      optax.add_decayed_weights(cfg.weight_decay, decay_mask),
      optax.scale_by_learning_rate(schedule))
  adam_schedule = lambda it: schedule(it) * cfg.muon_adam_lr_ratio
  return optax.partition({"muon": muon, "adamw": _adamw(cfg, adam_schedule)}, muon_labels)


# train.embed_lr and train.head_lr: the parameter groups with their own peak rate
LR_GROUPS = ("main", "embed", "head")


def lr_group_labels(params):
  """{parameter: 'embed' | 'head' | 'main'}: 'embed' the embedding tables (every nn.Embed's
  'embedding': the token table, so a tied head too, and the value embeddings), 'head' an untied
  head (the top-level 'head'), 'main' the rest (the matrices of the blocks, norms, biases,
  positions, mixing scalars)."""
  def label(path, _):
    if _key(path[-1]) == "embedding":
      return "embed"
    return "head" if _key(path[0]) == "head" else "main"
  return jax.tree_util.tree_map_with_path(label, params)


def _update_rule(cfg, schedule) -> optax.GradientTransformation:
  """cfg.optimizer with the learning rate `schedule`, before clipping."""
  if cfg.optimizer == "adamw":
    tx = _adamw(cfg, schedule)
  elif cfg.optimizer == "lion":
    tx = optax.lion(schedule, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=decay_mask)
  elif cfg.optimizer == "adafactor":
    # optax.adafactor adds its decay after the learning rate (not multiplied by it): composed
    # here so that train.weight_decay means what it means for AdamW
    tx = optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
                     optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                     optax.scale_by_learning_rate(schedule))
  elif cfg.optimizer == "muon":
    tx = _muon(cfg, schedule)
  elif cfg.optimizer == "sgd":
    tx = optax.chain(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
                     optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                     optax.scale_by_learning_rate(schedule))
  else:
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
  return tx


def scale_groups(ratios: dict) -> optax.GradientTransformation:
  """Multiplies the updates of each group of lr_group_labels by ratios[group] (a group not there,
  or at exactly 1.0, is left as it is)."""
  def update(updates, state, params=None):
    del params
    def scale(label, u):
      ratio = ratios.get(label, 1.0)
      return u if isinstance(ratio, float) and ratio == 1.0 else u * ratio
    return jax.tree.map(scale, lr_group_labels(updates), updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(cfg) -> optax.GradientTransformation:
  """cfg: config.train (its rates may be traced: training/vectorized.py).

  train.embed_lr and train.head_lr (LR_GROUPS): every rule here is linear in its learning rate
  (each ends in the rate times an update of its own), so a group with its own peak rate r is
  the rule's update times r / (the rate the group has without it: learning_rate, x
  muon_adam_lr_ratio for Muon's AdamW part, where the embeddings and head are). That keeps one
  rule and one optimizer state (checkpoints are those of the run without the groups), and a
  rate equal to the group's own leaves its updates as they are, bitwise."""
  schedule = lr_schedule(cfg)
  tx = _update_rule(cfg, schedule)
  base = cfg.learning_rate * (cfg.muon_adam_lr_ratio if cfg.optimizer == "muon" else 1.0)
  ratios = {group: rate / base for group, rate in (("embed", cfg.embed_lr), ("head", cfg.head_lr))
            if not (isinstance(rate, float) and rate == 0.0)}
  if ratios:
    tx = optax.chain(tx, scale_groups(ratios))
  if cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx
