"""The encoder-decoder Transformer and its decoding: padding, causality, cross-attention, the KV
cache, greedy and beam search. Every check holds for any parameters, so the tiny models here get
random ones drawn in numpy (nothing to compile for an init; unit-scale weights make every path
count). Greedy = beam size 1 on a trained model: tests/test_seq2seq.py."""

import itertools
import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import decoding
from llm_jax.config import default_config
from llm_jax.models import build_model

V, S, T = 11, 6, 7  # vocabulary, source length, decoder length
PAD, BOS, EOS = 0, 1, 2  # the seq2seq tokenizer's specials


def make(**model):
  """(model, random params of std 0.5)."""
  c = default_config().model
  c.update(name="transformer", n_layer=1, n_head=2, n_embd=16, block_size=10, use_bias=True)
  c.update(model)
  m = build_model(c, V)
  shapes = nn.unbox(jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, S), jnp.int32),
                                    jnp.zeros((1, T), jnp.int32))["params"])
  rng = np.random.default_rng(0)
  return m, jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), x.dtype), shapes)


def tokens(seed, shape):
  """Random ordinary tokens (no PAD, BOS or EOS), as numpy: nothing to compile."""
  return np.random.default_rng(seed).integers(3, V, shape, dtype=np.int32)


def other(x):
  """A different ordinary token than x (elementwise)."""
  return (x - 3 + 1) % (V - 3) + 3


def with_bos(tgt):
  out = tgt.copy()
  out[:, 0] = BOS
  return out


# the paper's model (1 layer a stack), and every switch flipped (2 layers a stack)
VARIANTS = [dict(norm="post", pos="sinusoidal", activation="relu"),
            dict(norm="pre", pos="learned", activation="gelu", tie_embeddings=False,
                 share_embeddings=False, n_layer=2)]
IDS = ["post-sinusoidal-tied-shared", "pre-learned-untied-separate-2-layers"]
# the switches of today's models: Llama's block, multi-query, QK-norm
MODERN = dict(norm="pre", pos="rope", norm_type="rmsnorm", activation="swiglu", n_kv_head=1,
              qk_norm=True, n_layer=2)


@pytest.fixture(scope="module")
def model():
  """The paper's model (the masks do not depend on the switches) and its jitted forward pass."""
  m, params = make(**VARIANTS[0])
  return m, params, jax.jit(lambda x, y: m.apply({"params": params}, x, y))


def test_switches_pick_the_parameters():
  _, params = make(**VARIANTS[0])
  assert set(params) == {"src_embed", "encoder", "decoder"}  # one shared table, tied head
  assert "pos" not in params["encoder"] and "ln_f" not in params["encoder"]
  assert "cross_attn" in params["decoder"]["layer_0"]
  assert "cross_attn" not in params["encoder"]["layer_0"]
  _, params = make(**VARIANTS[1])
  assert set(params) == {"src_embed", "tgt_embed", "head", "encoder", "decoder"}
  assert "pos" in params["decoder"] and "ln_f" in params["decoder"]
  assert set(params["encoder"]) == {"pos", "ln_f", "layer_0", "layer_1"}


def test_source_padding_changes_nothing_at_real_positions(model):
  m, params, f = model
  src, tgt = tokens(1, (2, S)), with_bos(tokens(2, (2, T)))
  src[1, 4:] = PAD  # the second source is 4 long
  base = f(src, tgt)
  assert base.shape == (2, T, V)
  padded = np.concatenate([src, np.full((2, 3), PAD, np.int32)], axis=1)
  np.testing.assert_allclose(f(padded, tgt), base, atol=1e-6, rtol=1e-6)
  # padding hides what it covers: a token there instead changes the output
  filled = src.copy()
  filled[1, 4:] = 5
  out = f(filled, tgt)
  np.testing.assert_array_equal(out[0], base[0])
  assert not np.allclose(out[1], base[1])


def test_the_decoder_is_causal(model):
  m, params, f = model
  src, tgt = tokens(3, (2, S)), with_bos(tokens(4, (2, T)))
  base = f(src, tgt)
  for t in range(T - 1):
    changed = tgt.copy()
    changed[0, t + 1:] = other(tgt[0, t + 1:])
    out = f(src, changed)
    np.testing.assert_array_equal(out[0, :t + 1], base[0, :t + 1])
    assert not np.allclose(out[0, t + 1:], base[0, t + 1:])
  # target padding: a PAD key is hidden from the positions after it as well
  padded = tgt.copy()
  padded[1, 5:] = PAD
  np.testing.assert_array_equal(f(src, padded)[1, :5], base[1, :5])


def test_every_source_position_reaches_every_target_position(model):
  m, params, f = model
  src, tgt = tokens(5, (2, S)), with_bos(tokens(6, (2, T)))
  base = f(src, tgt)
  for s in range(S):
    changed = src.copy()
    changed[0, s] = other(src[0, s])
    out = f(changed, tgt)
    assert (np.abs(out[0] - base[0]).max(axis=-1) > 0).all(), s
    np.testing.assert_array_equal(out[1], base[1])  # and nothing leaks across the batch


@pytest.mark.parametrize("variant", VARIANTS + [MODERN],
                         ids=IDS + ["rope-rmsnorm-swiglu-mqa-qknorm"])
def test_cached_decoding_equals_the_full_forward(variant):
  m, params = make(**variant)
  src, tgt = tokens(7, (2, S)), with_bos(tokens(8, (2, T)))
  src[0, 3:] = PAD
  full = jax.jit(m.apply)({"params": params}, src, tgt)
  memory = jax.jit(partial(m.apply, method="encode"))({"params": params}, src)
  step = jax.jit(lambda cache, tok_B1: m.apply(
      {"params": params, "cache": cache}, tok_B1, memory, src != PAD, decode=True,
      method="decode", mutable=["cache"]))
  cache = decoding.init_decoder_cache(m, 2, T, S)
  outs = []
  for t in range(T):  # one position at a time, as decoding does
    logits, mutated = step(cache, tgt[:, t:t + 1])
    cache = mutated["cache"]
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_is_the_argmax_of_the_full_forward_over_its_own_output(model):
  m, params, f = model
  src = tokens(9, (2, S))
  src[1, 2:] = PAD
  greedy = np.asarray(decoding.greedy_decode(m, params, src, max_len=T, bos_id=BOS, eos_id=EOS))
  logits = np.array(f(src, np.concatenate([np.full((2, 1), BOS), greedy[:, :-1]], axis=1)))
  logits[..., [PAD, BOS]] = -np.inf  # never emitted
  after_eos = np.cumsum(greedy == EOS, axis=1) - (greedy == EOS) > 0
  np.testing.assert_array_equal(greedy, np.where(after_eos, PAD, np.argmax(logits, axis=-1)))


def test_a_beam_as_wide_as_all_prefixes_finds_the_best_sequence(model):
  """With K >= W^(L-1) (W tokens can be emitted: all but PAD and BOS) no prefix is ever pruned:
  beam search must return the exact optimum of log P / lp(len) over every sequence of at most L
  tokens (ending at the first EOS), for each source."""
  m, params, f = model
  L, alpha = 3, 0.6
  emitted = [EOS] + list(range(3, V))
  src = tokens(10, (2, S))
  src[1, 3:] = PAD
  best, score = decoding.beam_search(m, params, src, beam_size=len(emitted) ** (L - 1),
                                     max_len=L, alpha=alpha, bos_id=BOS, eos_id=EOS)
  seqs = np.array(list(itertools.product(emitted, repeat=L)), np.int32)  # every sequence
  decoder_inputs = np.concatenate([np.full((len(seqs), 1), BOS), seqs[:, :-1]], axis=1)
  ending = lambda seq: next((i + 1 for i, t in enumerate(seq) if t == EOS), L)  # at its EOS
  for b in range(2):
    logp = np.asarray(jax.nn.log_softmax(f(np.repeat(src[b:b + 1], len(seqs), 0),
                                           decoder_inputs)))
    tok_logp = np.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0]  # (N, L)
    candidates = {}
    for seq, lp in zip(seqs, tok_logp):
      n = ending(seq)
      candidates[tuple(seq[:n])] = lp[:n].sum() / ((5 + n) / 6) ** alpha
    want = max(candidates, key=candidates.get)
    got = [int(t) for t in np.asarray(best[b])]
    assert tuple(got[:ending(got)]) == want
    assert math.isclose(float(score[b]), candidates[want], rel_tol=1e-5)


def test_scanned_stacks_and_the_fused_attention_compute_the_same():
  """model.scan_layers and model.attention apply to the transformer too: with the loop's
  parameters stacked on a layer axis, the scanned stacks with jax.nn.dot_product_attention
  compute the loop's einsum forward pass (padding included), and greedy decoding with their cache
  is the argmax of that forward pass over its own output."""
  loop, params = make(**VARIANTS[1])
  scan, _ = make(**VARIANTS[1], scan_layers=True, attention="dot_product")
  stacked = dict(params)
  for stack in ("encoder", "decoder"):
    layers = [params[stack][f"layer_{i}"] for i in range(2)]
    stacked[stack] = {k: v for k, v in params[stack].items() if not k.startswith("layer_")}
    stacked[stack]["layer"] = {"block": jax.tree.map(lambda *x: jnp.stack(x), *layers)}
  src, tgt = tokens(11, (2, S)), with_bos(tokens(12, (2, T)))
  src[0, 3:], tgt[1, 5:] = PAD, PAD
  f = jax.jit(lambda x, y: scan.apply({"params": stacked}, x, y))
  np.testing.assert_allclose(f(src, tgt), jax.jit(loop.apply)({"params": params}, src, tgt),
                             atol=1e-5, rtol=1e-5)
  greedy = np.asarray(decoding.greedy_decode(scan, stacked, src, max_len=T, bos_id=BOS,
                                             eos_id=EOS))
  logits = np.array(f(src, np.concatenate([np.full((2, 1), BOS, np.int32), greedy[:, :-1]], 1)))
  logits[..., [PAD, BOS]] = -np.inf  # never emitted
  after_eos = np.cumsum(greedy == EOS, axis=1) - (greedy == EOS) > 0
  np.testing.assert_array_equal(greedy, np.where(after_eos, PAD, np.argmax(logits, axis=-1)))


def test_beam_search_with_scanned_stacks_finds_the_loops_beams():
  """Beam search reorders the decoder's KV cache by each new hypothesis's parent: under
  model.scan_layers the cache has a layer axis first, and the reorder must take the rows behind
  it. With the loop's parameters stacked, the scanned model's beams and scores are the loop's."""
  loop, params = make(**VARIANTS[1])
  scan, _ = make(**VARIANTS[1], scan_layers=True)
  stacked = dict(params)
  for stack in ("encoder", "decoder"):
    layers = [params[stack][f"layer_{i}"] for i in range(2)]
    stacked[stack] = {k: v for k, v in params[stack].items() if not k.startswith("layer_")}
    stacked[stack]["layer"] = {"block": jax.tree.map(lambda *x: jnp.stack(x), *layers)}
  src = tokens(13, (3, S))
  src[1, 4:] = PAD
  kw = dict(beam_size=4, max_len=T, alpha=0.6, bos_id=BOS, eos_id=EOS)
  want, want_score = decoding.beam_search(loop, params, src, **kw)
  got, got_score = decoding.beam_search(scan, stacked, src, **kw)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_allclose(np.asarray(got_score), np.asarray(want_score), rtol=1e-5)


def test_the_modern_switches_train_and_decode_greedily_as_the_full_forward():
  """Rotary positions, RMSNorm, SwiGLU, multi-query attention and QK-norm in both stacks: no
  position table, a gradient step lowers the loss on a batch, and greedy decoding with the cache
  is the argmax of the full forward pass over its own output."""
  m, params = make(**MODERN)
  assert "pos" not in params["encoder"] and "pos" not in params["decoder"]
  assert set(params["decoder"]["layer_0"]["attn"]) == {"query", "kv", "out", "q_norm", "k_norm"}
  src, tgt = tokens(13, (4, S)), with_bos(tokens(14, (4, T)))
  src[0, 4:] = PAD
  labels = np.concatenate([tgt[:, 1:], np.full((4, 1), EOS, np.int32)], axis=1)

  def loss(p):
    logp = jax.nn.log_softmax(m.apply({"params": p}, src, tgt))
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1).mean()

  before, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
  stepped = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  assert float(jax.jit(loss)(stepped)) < float(before)
  f = jax.jit(lambda x, y: m.apply({"params": stepped}, x, y))
  greedy = np.asarray(decoding.greedy_decode(m, stepped, src, max_len=T, bos_id=BOS, eos_id=EOS))
  logits = np.array(f(src, np.concatenate([np.full((4, 1), BOS, np.int32), greedy[:, :-1]], 1)))
  logits[..., [PAD, BOS]] = -np.inf  # never emitted
  after_eos = np.cumsum(greedy == EOS, axis=1) - (greedy == EOS) > 0
  np.testing.assert_array_equal(greedy, np.where(after_eos, PAD, np.argmax(logits, axis=-1)))


def test_rotary_positions_rotate_self_attention_not_cross_attention():
  """With pos='rope' a self-attention's output depends on where its tokens stand; the
  cross-attention's is the same as without rotation (the memory is not the decoder's sequence)."""
  from llm_jax.models.attention import MultiHeadAttention
  cfg = lambda pos: make(pos=pos)[0].cfg
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  memory = jax.random.normal(jax.random.key(2), (2, S, 16))
  for memory_BSC in (None, memory):
    attn = lambda pos: MultiHeadAttention(cfg(pos), 0.02)
    p = nn.unbox(attn("rope").init(jax.random.key(0), x, None, False,
                                   memory_BSC=memory_BSC)["params"])
    rotated, plain = (attn(pos).apply({"params": p}, x, None, False, memory_BSC=memory_BSC)
                      for pos in ("rope", "learned"))
    if memory_BSC is None:
      assert not np.allclose(rotated, plain)
    else:
      np.testing.assert_array_equal(rotated, plain)
