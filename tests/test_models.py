import itertools
import math

import flax.linen as nn
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
  params = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"])
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


# the switches of today's models: the positions on their own, the others together
MODERN = [dict(pos="rope"), dict(pos="none"),
          dict(norm_type="rmsnorm", norm="post", activation="geglu", ffn_hidden=24, n_kv_head=1),
          dict(pos="rope", norm_type="rmsnorm", activation="swiglu", n_head=4, n_kv_head=2,
               qk_norm=True)]
ids = lambda v: "-".join(f"{k}={x}" for k, x in v.items())


@pytest.mark.parametrize("variant", [dict(norm=n, pos=p) for n, p in itertools.product(
    ["pre", "post"], ["learned", "sinusoidal"])] + MODERN, ids=ids)
def test_gpt_is_causal(variant):
  """Changing the tokens after position t never changes the logits at positions <= t."""
  m, params = make(**variant)
  f = jax.jit(lambda x: m.apply({"params": params}, x))
  idx = jax.random.randint(jax.random.key(2), (1, T), 0, V)
  base = f(idx)
  for t in range(T - 1):
    changed = idx.at[0, t + 1:].set((idx[0, t + 1:] + 7) % V)
    out = f(changed)
    np.testing.assert_array_equal(out[0, :t + 1], base[0, :t + 1])
    assert not np.allclose(out[0, t + 1:], base[0, t + 1:])  # the future did change


@pytest.mark.parametrize("variant", [dict(pos="learned"), dict(pos="sinusoidal", norm="post"),
                                     MODERN[0], MODERN[-1], dict(MODERN[-1], scan_layers=True)],
                         ids=ids)
def test_a_packed_row_gives_each_continuation_the_logits_of_its_own_sequence(variant):
  """positions_BT and mask_BTT: a context of 5 tokens and two continuations of 4 and 3 packed in
  one row (each continuation at the positions after the context, attending to the context and
  to itself) give, at every token, the logits of context + that continuation read alone."""
  m, params = make(**variant)
  ctx, a, b = [3, 1, 4, 1, 5], [9, 2, 6, 5], [3, 5, 8]
  row = ctx + a + b
  positions = list(range(5)) + list(range(5, 9)) + list(range(5, 8))
  segment = np.array([0] * 5 + [1] * 4 + [2] * 3)
  mask = (((segment[None, :] == 0) | (segment[None, :] == segment[:, None])) &
          (np.array(positions)[None, :] <= np.array(positions)[:, None]))
  packed = m.apply({"params": params}, jnp.array([row]), positions_BT=jnp.array([positions]),
                   mask_BTT=jnp.array([mask]))[0]
  alone_a = m.apply({"params": params}, jnp.array([ctx + a]))[0]
  alone_b = m.apply({"params": params}, jnp.array([ctx + b]))[0]
  np.testing.assert_allclose(packed[:9], alone_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[9:], alone_b[5:], rtol=1e-5, atol=1e-5)
  # the row read as one causal sequence (b after a, at positions 9..11) is not that: the
  # positions and the mask are what make each continuation its own
  plain = m.apply({"params": params}, jnp.array([row]))[0]
  assert not np.allclose(plain[9:], alone_b[5:], atol=1e-3)


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


@pytest.mark.parametrize("variant", [{}, MODERN[-1]], ids=["default", "modern"])
def test_scanned_layers_equal_the_loop_with_the_same_parameters(variant):
  loop, params = make(**variant)
  scan, scan_params = make(scan_layers=True, **variant)
  blocks = [params[f"h_{i}"] for i in range(2)]
  stacked = {k: v for k, v in params.items() if not k.startswith("h_")}
  stacked["h"] = {"block": jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)}  # (L, ...)
  assert jax.tree.structure(stacked) == jax.tree.structure(scan_params)
  idx = jax.random.randint(jax.random.key(1), (2, T), 0, V)
  np.testing.assert_allclose(scan.apply({"params": stacked}, idx),
                             loop.apply({"params": params}, idx), rtol=1e-5, atol=1e-6)
  # and each layer its own parameters, not one layer repeated
  proj = stacked["h"]["block"]["ffn"]["proj"]["kernel"]
  assert not np.allclose(proj[0], proj[1])


def test_every_family_of_the_registry_builds_and_takes_its_example_inputs():
  from llm_jax.models import FAMILIES, example_inputs, flops_per_token, init_params
  from llm_jax.training.tasks import KINDS
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
  self_params = nn.unbox(attn.init(jax.random.key(0), x, None, False)["params"])
  cross_params = nn.unbox(attn.init(jax.random.key(0), x, None, False, memory_BSC=x)["params"])
  assert set(self_params) == {"qkv", "out"} and set(cross_params) == {"query", "kv", "out"}
  qkv = self_params["qkv"]["kernel"]  # (C, 3, H, D)
  split = {"query": {"kernel": qkv[:, 0]}, "kv": {"kernel": qkv[:, 1:]}, "out": self_params["out"]}
  np.testing.assert_allclose(attn.apply({"params": split}, x, None, False, memory_BSC=x),
                             attn.apply({"params": self_params}, x, None, False),
                             rtol=1e-5, atol=1e-6)


def test_the_switches_pick_the_parameters_and_their_shapes():
  C, F = 16, 24
  # gated FFN: a gate and an up projection; the default width 8C/3 rounded up to 64
  _, params = make(activation="swiglu", use_bias=True)
  assert set(params["h_0"]["ffn"]) == {"gate", "up", "proj"}
  assert params["h_0"]["ffn"]["gate"]["kernel"].shape == (C, 64)
  _, params = make(activation="geglu", ffn_hidden=F)
  assert params["h_0"]["ffn"]["up"]["kernel"].shape == (C, F)
  _, params = make(ffn_hidden=F)
  assert params["h_0"]["ffn"]["fc"]["kernel"].shape == (C, F)
  _, params = make()
  assert params["h_0"]["ffn"]["fc"]["kernel"].shape == (C, 4 * C)
  # RMSNorm: a scale, no bias even with use_bias
  _, params = make(norm_type="rmsnorm", use_bias=True)
  assert set(params["h_0"]["ln_attn"]) == set(params["ln_f"]) == {"scale"}
  # grouped-query attention: queries of n_head heads, keys and values of n_kv_head; QK-norm: one
  # scale of head size for each of queries and keys
  _, params = make(n_head=4, n_kv_head=2, qk_norm=True)
  attn = params["h_0"]["attn"]
  assert set(attn) == {"query", "kv", "out", "q_norm", "k_norm"}
  assert attn["query"]["kernel"].shape == (C, 4, 4) and attn["kv"]["kernel"].shape == (C, 2, 2, 4)
  assert attn["q_norm"]["scale"].shape == attn["k_norm"]["scale"].shape == (4,)
  # rotary and no positions: no table
  for pos in ("rope", "none"):
    assert "wpe" not in make(pos=pos)[1]


def test_flops_count_the_gated_ffn_and_the_kv_heads_from_the_shapes():
  """6N + 12LTd with N counted from the parameters' shapes: the gated FFN's three matrices and
  the narrower key/value projection are in N; the attention's matmuls keep n_head heads of C/H."""
  from llm_jax.models import FAMILIES, flops_per_token, init_params
  from llm_jax.models.flops import count_params
  c = default_config().model
  C, H, K, F, L = 16, 4, 1, 40, 2
  c.update(n_layer=L, n_head=H, n_embd=C, block_size=T, pos="rope", activation="swiglu",
           ffn_hidden=F, n_kv_head=K, norm_type="rmsnorm")
  params = jax.eval_shape(lambda: init_params(build_model(c, V), c, jax.random.key(0)))
  D = C // H
  per_layer = C * H * D + C * 2 * K * D + H * D * C + 3 * C * F + 2 * C  # attention, FFN, norms
  n = V * C + L * per_layer + C  # tied table, layers, final norm
  assert count_params(params) == (n, n)
  assert flops_per_token(c, n) == 6 * n + 12 * L * T * C
  assert FAMILIES["gpt"].flops(c, n) == flops_per_token(c, n)


def test_grouped_query_attention_with_repeated_kv_heads_equals_multi_head():
  """GQA is MHA whose G = n_head / n_kv_head consecutive query heads share a key/value head:
  with its key/value heads repeated into the fused QKV projection, MHA computes the same, on both
  attention implementations; n_kv_head = n_head is MHA itself (its parameters, its output)."""
  H, K, D = 4, 2, 4
  idx = jax.random.randint(jax.random.key(1), (2, T), 0, V)
  for attention in ("einsum", "dot_product"):
    gqa, params = make(n_head=H, n_kv_head=K, attention=attention)
    mha, _ = make(n_head=H, attention=attention)
    mha_params = {**params}
    for i in range(2):
      a = params[f"h_{i}"]["attn"]
      kv = jnp.repeat(a["kv"]["kernel"], H // K, axis=2)  # (C, 2, H, D): head h reads h // G
      qkv = jnp.concatenate([a["query"]["kernel"][:, None], kv], axis=1)  # (C, 3, H, D)
      mha_params[f"h_{i}"] = {**params[f"h_{i}"], "attn": {"qkv": {"kernel": qkv}, "out": a["out"]}}
    np.testing.assert_allclose(gqa.apply({"params": params}, idx),
                               mha.apply({"params": mha_params}, idx), rtol=1e-5, atol=1e-6)
  same, same_params = make(n_head=H, n_kv_head=H)
  default, default_params = make(n_head=H)
  assert jax.tree.structure(same_params) == jax.tree.structure(default_params)
  np.testing.assert_array_equal(same.apply({"params": default_params}, idx),
                                default.apply({"params": default_params}, idx))


def test_rotary_scores_depend_on_the_position_difference_only():
  from llm_jax.models.attention import rope
  D = 8
  q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, D))  # (B, T, H, D) each
  score = lambda t, s: float(jnp.sum(rope(q, jnp.array([t]), 10000.0) *
                                     rope(k, jnp.array([s]), 10000.0)))
  for t, s in ((3, 1), (7, 7), (2, 9)):
    for shift in (1, 5, 40):
      assert math.isclose(score(t + shift, s + shift), score(t, s), rel_tol=1e-4, abs_tol=1e-5)
  assert not math.isclose(score(3, 1), score(4, 1), rel_tol=1e-3)  # and it does depend on it
  # a rotation: the norm is kept, position 0 is the identity
  np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([17]), 10000.0)),
                             jnp.linalg.norm(q), rtol=1e-5)
  np.testing.assert_allclose(rope(q, jnp.array([0]), 10000.0), q)


def test_a_padded_vocabulary_adds_rows_that_are_never_needed():
  m, params = make(vocab_size=32, tie_embeddings=False)
  assert params["wte"]["embedding"].shape == (32, 16) and params["head"]["kernel"].shape == (16, 32)
  idx = jax.random.randint(jax.random.key(1), (2, T), 0, V)
  assert m.apply({"params": params}, idx).shape == (2, T, 32)
  from llm_jax.errors import UserError
  with pytest.raises(UserError, match="model.vocab_size=16 is smaller than the tokenizer's"):
    make(vocab_size=16)


@pytest.mark.parametrize("variant", [{}, {"norm_type": "rmsnorm", "qk_norm": True}],
                         ids=["layernorm", "rmsnorm_qk_norm"])
def test_norm_eps_reaches_every_norm(variant):
  """With the same parameters a larger epsilon changes the logits (the norms read it); GPT-2's
  tanh GELU is close to the exact one but not it."""
  m, params = make(**variant)
  idx = jax.random.randint(jax.random.key(1), (2, T), 0, V)
  base = m.apply({"params": params}, idx)
  big, _ = make(**variant, norm_eps=10.0)
  assert jnp.abs(big.apply({"params": params}, idx) - base).max() > 1e-3
  gelu, _ = make(**variant, activation="gelu_tanh")
  tanh_diff = jnp.abs(gelu.apply({"params": params}, idx) - base).max()
  assert 0 < tanh_diff < 1e-2  # the tanh approximation: close to the exact GELU, not equal
