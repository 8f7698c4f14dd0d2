"""The speedrun switches (docs/speedrun.md): each one's identity with the model or optimizer
without it, what it must guarantee (windows, caps, document masks, BOS rows, the ring-buffer
cache), the mesh agreeing with one device, and one line for each bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from llm_jax.config import default_config, validate
from llm_jax.errors import UserError
from llm_jax.models import build_model, init_params
from llm_jax.models.layers import ACTIVATIONS
from llm_jax.training.optimizer import lr_group_labels, make_optimizer

V, T = 40, 16


def model_config(**switches):
  c = default_config()
  c.model.update(n_layer=4, n_head=2, n_embd=32, block_size=T, dtype="float32", pos="rope")
  c.model.update(switches)
  validate(c)
  return c.model


def model_and_params(seed=0, **switches):
  m = model_config(**switches)
  model = build_model(m, V)
  return model, init_params(model, m, jax.random.key(seed))


TOKENS = jax.random.randint(jax.random.key(1), (2, T), 0, V)


def logits(model, params, tokens=TOKENS, **kw):
  return np.asarray(model.apply({"params": params}, tokens, **kw))


def merged(params, base):
  """params with every leaf that `base` also has taken from base."""
  if not isinstance(params, dict):
    return base
  return {k: merged(v, base[k]) if k in base else v for k, v in params.items()}


@pytest.mark.parametrize("scan", [False, True])
def test_a_window_of_at_least_block_size_is_full_causal_attention_bitwise(scan):
  model, params = model_and_params(scan_layers=scan)
  full = logits(model, params)
  for window, pattern in ((T, ""), (4 * T, "LG")):
    windowed, _ = model_and_params(scan_layers=scan, attn_window=window, window_pattern=pattern)
    assert np.array_equal(logits(windowed, params), full)
  # and a short window is another model: the last position sees 2 tokens, not 16
  short, _ = model_and_params(scan_layers=scan, attn_window=2)
  assert not np.allclose(logits(short, params)[:, -1], full[:, -1], atol=1e-4)
  assert np.allclose(logits(short, params)[:, :2], full[:, :2], atol=1e-6)  # within the window


def test_relu2_is_relu_squared():
  x = jnp.linspace(-3, 3, 61)
  assert np.array_equal(ACTIVATIONS["relu2"](x), jnp.maximum(x, 0) ** 2)


def test_softcap_with_a_huge_cap_is_no_cap_and_a_cap_is_never_exceeded():
  model, params = model_and_params()
  plain = logits(model, params)
  huge, _ = model_and_params(logit_softcap=1e6)
  assert np.allclose(logits(huge, params), plain, atol=1e-6, rtol=0)
  cap = float(np.abs(plain).max()) / 4  # a quarter of the largest logit: many are capped
  capped, _ = model_and_params(logit_softcap=cap)
  out = logits(capped, params)
  assert np.abs(out).max() <= cap and np.abs(out).max() > 0.9 * cap
  assert np.allclose(out, cap * np.tanh(plain / cap), atol=1e-6)


def test_zero_init_proj_starts_every_block_as_the_identity():
  model, params = model_and_params(zero_init_proj=True)
  for i in range(4):
    assert not np.any(params[f"h_{i}"]["attn"]["out"]["kernel"])
    assert not np.any(params[f"h_{i}"]["ffn"]["proj"]["kernel"])
  assert np.any(params["h_0"]["attn"]["qkv"]["kernel"])


def test_value_embeddings_and_unet_skips_at_zero_weights_are_the_baseline_bitwise():
  base, base_params = model_and_params()
  expected = logits(base, base_params)
  model, params = model_and_params(value_embeddings=True, unet_skips=True)
  assert sorted(k for k in params if k.startswith("ve_")) == ["ve_0", "ve_1"]
  # the baseline's parameters, the extra tables and mixing weights beside them
  params = merged(params, base_params)
  assert not np.allclose(logits(model, params), expected, atol=1e-4)  # at init they mix
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if path[-1].key in ("ve_lambda", "skip_weights") else x,
      params)
  assert np.array_equal(logits(model, params), expected)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_group_rates_equal_to_the_main_rate_are_todays_optimizer_bitwise(optimizer):
  c = default_config().train
  c.update(optimizer=optimizer, learning_rate=3e-3, warmup_steps=1, max_steps=10)
  m = model_config(tie_embeddings=False, value_embeddings=True)
  params = init_params(build_model(m, V), m, jax.random.key(0))
  labels = lr_group_labels(params)
  assert labels["head"]["kernel"] == "head" and labels["wte"]["embedding"] == "embed"
  assert labels["ve_0"]["embedding"] == "embed" and labels["h_0"]["attn"]["qkv"]["kernel"] == "main"
  grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i), p.shape), params)
           for i in range(3)]

  def run(**rates):
    cfg = c.copy_and_resolve_references()
    cfg.update(rates)
    tx = make_optimizer(cfg)
    p, state = params, tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, p)
      p = optax.apply_updates(p, updates)
    return p

  today = run()
  same = run(embed_lr=3e-3, head_lr=3e-3)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), today, same))
  # a group's own rate moves that group alone (the clipping's global norm is the gradients')
  fast = run(embed_lr=3e-2)
  assert not np.array_equal(fast["wte"]["embedding"], today["wte"]["embedding"])
  assert np.array_equal(fast["head"]["kernel"], today["head"]["kernel"])
  assert np.array_equal(fast["h_1"]["attn"]["qkv"]["kernel"], today["h_1"]["attn"]["qkv"]["kernel"])
