"""AdamW with nanoGPT's learning-rate schedule, decay on weights and embeddings (not biases or norm
scales), and global-norm clipping."""

import jax
import jax.numpy as jnp
import optax


def lr_schedule(cfg):
  """cfg: config.train. Linear warmup, cosine decay to min_lr at lr_decay_steps, then min_lr.

  Exactly nanoGPT's get_lr(it), where `it` is the number of updates done so far:
    it < warmup:          lr * (it + 1) / (warmup + 1)
    warmup <= it <= decay: min_lr + 0.5 * (1 + cos(pi * (it - warmup) / (decay - warmup))) * (lr - min_lr)
    it > decay:           min_lr
  """
  lr, min_lr = cfg.learning_rate, cfg.min_lr
  warmup, decay = cfg.warmup_steps, cfg.lr_decay_steps

  def schedule(it):
    it = jnp.asarray(it, jnp.float32)
    warm = lr * (it + 1) / (warmup + 1)
    ratio = jnp.clip((it - warmup) / (decay - warmup), 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (lr - min_lr)
    return jnp.where(it < warmup, warm, cosine)

  return schedule


def decay_mask(params):
  """Weight decay on nanoGPT's 'tensors of rank >= 2' (matrices, embeddings), not on biases and
  norm scales; told apart by name, so that parameters stacked on a layer axis
  (model.scan_layers) keep the rule."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: getattr(path[-1], "key", None) not in ("bias", "scale"), params)


def make_optimizer(cfg) -> optax.GradientTransformation:
  adamw = optax.adamw(lr_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=1e-8,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  if cfg.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
  return adamw
