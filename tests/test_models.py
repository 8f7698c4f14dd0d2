import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.config import default_config
from llm_jax.models import build_model
from llm_jax.models.layers import sinusoidal_table

V, T = 23, 12


def make(**model):
  c = default_config().model
  c.update(n_layer=2, n_head=2, n_embd=16, block_size=T)
  c.update(model)
  m = build_model(c, V)
  params = m.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
  return m, params


@pytest.mark.parametrize("norm,pos,activation,tie", [
    ("pre", "learned", "gelu", True), ("post", "sinusoidal", "relu", False),
    ("pre", "sinusoidal", "relu", True), ("post", "learned", "gelu", True)])
def test_gpt_shapes_and_switches(norm, pos, activation, tie):
  m, params = make(norm=norm, pos=pos, activation=activation, tie_embeddings=tie)
  idx = jax.random.randint(jax.random.key(1), (3, T), 0, V)
  assert m.apply({"params": params}, idx).shape == (3, T, V)
  assert m.apply({"params": params}, idx[:, :5]).shape == (3, 5, V)  # shorter context works
  assert ("head" in params) == (not tie)
  assert ("wpe" in params) == (pos == "learned")
  assert ("ln_f" in params) == (norm == "pre")


def test_bigram_is_a_table_lookup():
  m, params = make(name="bigram")
  table = params["table"]["embedding"]
  assert table.shape == (V, V)
  idx = jnp.array([[3, 5, 3]])
  np.testing.assert_array_equal(m.apply({"params": params}, idx)[0], table[jnp.array([3, 5, 3])])


@pytest.mark.parametrize("norm,pos", list(itertools.product(["pre", "post"], ["learned", "sinusoidal"])))
def test_gpt_is_causal(norm, pos):
  """Changing the tokens after position t never changes the logits at positions <= t."""
  m, params = make(norm=norm, pos=pos)
  f = jax.jit(lambda x: m.apply({"params": params}, x))
  idx = jax.random.randint(jax.random.key(2), (1, T), 0, V)
  base = f(idx)
  for t in range(T - 1):
    changed = idx.at[0, t + 1:].set((idx[0, t + 1:] + 7) % V)
    out = f(changed)
    np.testing.assert_array_equal(out[0, :t + 1], base[0, :t + 1])
    assert not np.allclose(out[0, t + 1:], base[0, t + 1:])  # the future did change


def test_dropout_only_in_training():
  m, params = make(dropout=0.5)
  idx = jnp.zeros((2, T), jnp.int32)
  a = m.apply({"params": params}, idx)
  np.testing.assert_array_equal(a, m.apply({"params": params}, idx))
  b = m.apply({"params": params}, idx, train=True, rngs={"dropout": jax.random.key(0)})
  c = m.apply({"params": params}, idx, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, b) and not np.allclose(b, c)


def test_sinusoidal_table_matches_the_formula():
  L, d = 50, 16
  table = sinusoidal_table(L, d)
  for pos in (0, 1, 7, 49):
    for i in range(d // 2):
      angle = pos / 10000 ** (2 * i / d)
      assert math.isclose(table[pos, 2 * i], math.sin(angle), abs_tol=1e-6)
      assert math.isclose(table[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-6)


def test_residual_projections_use_the_scaled_init():
  m, params = make(n_layer=8, n_embd=64)
  std = float(jnp.std(params["h_0"]["ffn"]["proj"]["kernel"]))
  assert abs(std - 0.02 / math.sqrt(16)) < 0.002
  assert abs(float(jnp.std(params["h_0"]["ffn"]["fc"]["kernel"])) - 0.02) < 0.002


def test_scale_embeddings_multiplies_the_token_embeddings_by_sqrt_width():
  scaled, params = make(scale_embeddings=True, tie_embeddings=False, pos="sinusoidal")
  plain, _ = make(scale_embeddings=False, tie_embeddings=False, pos="sinusoidal")
  idx = jax.random.randint(jax.random.key(1), (2, T), 0, V)
  wte = params["wte"]["embedding"]
  params_x = {**params, "wte": {"embedding": wte * math.sqrt(16)}}
  np.testing.assert_allclose(scaled.apply({"params": params}, idx),
                             plain.apply({"params": params_x}, idx), rtol=1e-5, atol=1e-5)
  assert not np.allclose(scaled.apply({"params": params}, idx), plain.apply({"params": params}, idx))


def test_scanned_layers_equal_the_loop_with_the_same_parameters():
  loop, params = make()
  scan, scan_params = make(scan_layers=True)
  blocks = [params[f"h_{i}"] for i in range(2)]
  stacked = {k: v for k, v in params.items() if not k.startswith("h_")}
  stacked["h"] = {"block": jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)}  # (L, ...)
  assert jax.tree.structure(stacked) == jax.tree.structure(scan_params)
  idx = jax.random.randint(jax.random.key(1), (2, T), 0, V)
  np.testing.assert_allclose(scan.apply({"params": stacked}, idx),
                             loop.apply({"params": params}, idx), rtol=1e-5, atol=1e-6)
  # and each layer its own parameters, not one layer repeated
  assert not np.allclose(stacked["h"]["block"]["ffn"]["fc"]["kernel"][0],
                         stacked["h"]["block"]["ffn"]["fc"]["kernel"][1])


def test_every_family_of_the_registry_builds_and_takes_its_example_inputs():
  from llm_jax.models import FAMILIES, example_inputs, flops_per_token, init_params
  from llm_jax.tasks import KINDS
  for name, family in FAMILIES.items():
    c = default_config().model
    c.update(name=name, n_layer=1, n_head=2, n_embd=16, block_size=T)
    m = build_model(c, V)
    assert isinstance(m, family.module) and family.task in KINDS
    params = jax.eval_shape(lambda: init_params(m, c, jax.random.key(0)))  # nothing compiled
    logits = jax.eval_shape(lambda p: m.apply({"params": p}, *example_inputs(c)), params)
    assert logits.shape == (1, T, V), name
    n = flops_per_token(c, 1000)
    assert n is None or n >= 6 * 1000, name


def test_cross_attention_is_asked_for_not_guessed_from_its_inputs():
  """Cross-attention of x to x itself (the same array) keeps its own query and key/value
  projections; with the fused self-attention's weights split into them, it computes the same."""
  from llm_jax.models.attention import MultiHeadAttention
  c = default_config().model
  c.update(n_head=2, n_embd=16, block_size=T)
  attn = MultiHeadAttention(build_model(c, V).cfg, 0.02)
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  self_params = attn.init(jax.random.key(0), x, None, False)["params"]
  cross_params = attn.init(jax.random.key(0), x, None, False, memory_BSC=x)["params"]
  assert set(self_params) == {"qkv", "out"} and set(cross_params) == {"query", "kv", "out"}
  qkv = self_params["qkv"]["kernel"]  # (C, 3, H, D)
  split = {"query": {"kernel": qkv[:, 0]}, "kv": {"kernel": qkv[:, 1:]}, "out": self_params["out"]}
  np.testing.assert_allclose(attn.apply({"params": split}, x, None, False, memory_BSC=x),
                             attn.apply({"params": self_params}, x, None, False),
                             rtol=1e-5, atol=1e-6)
