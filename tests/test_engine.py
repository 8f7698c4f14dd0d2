"""The batched engine (decoding/engine.py) against decoding one prompt at a time (decoding/lm.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import decoding
from llm_jax.config import default_config
from llm_jax.decoding import engine
from llm_jax.errors import UserError
from llm_jax.models import build_model

V = 13


def make(L, **model):
  c = default_config().model
  c.update(n_layer=2, n_head=2, n_embd=16, block_size=L)
  c.update(model)
  m = build_model(c, V)
  return m, nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"])


def alone(m, params, prompt, n_new, L):
  """Today's single-prompt greedy decoding: the new tokens."""
  seq = decoding.generate(m, params, np.array([prompt]), jax.random.key(0), max_new_tokens=n_new,
                          block_size=L, greedy=True)
  return seq[0, len(prompt):].tolist()


def prompts_of_lengths(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, V, n).tolist() for n in lengths]


L32 = 16  # block_size of the shared model


@pytest.fixture(scope="module")
def gpt32():
  return make(L32)


@pytest.fixture(scope="module")
def greedy32(gpt32):
  """32 prompts, two of each length 1..block_size, each decoded alone; 6 tokens, past
  block_size for the longest (the window past the cache)."""
  m, params = gpt32
  prompts = prompts_of_lengths(list(range(1, L32 + 1)) * 2)
  n_new = 6
  return prompts, n_new, [alone(m, params, p, n_new, L32) for p in prompts]


def test_greedy_batch_equals_each_prompt_alone(gpt32, greedy32):
  m, params = gpt32
  prompts, n_new, refs = greedy32
  out = engine.generate_batch(m, params, prompts, jax.random.key(3), block_size=L32,
                              max_new_tokens=n_new, temperature=0)
  assert [(c.prompt_index, c.sample_index) for c in out] == [(k, 0) for k in range(32)]
  for c, ref in zip(out, refs):
    assert c.tokens == ref, c.prompt_index
    assert c.finish_reason == "length"


def test_per_row_limits_eos_and_stop_sequences_end_rows_where_the_single_path_does(gpt32,
                                                                                   greedy32):
  m, params = gpt32
  prompts, n_new, refs = greedy32
  limits = [1 + k % n_new for k in range(len(prompts))]
  stop = refs[5][2:4]  # a pair of tokens that occurs in some rows' new tokens
  eos = refs[9][1]

  def expected(ref, limit):
    for i in range(limit):
      if ref[i] == eos or (i >= 1 and ref[i - 1:i + 1] == stop):
        return ref[:i + 1], "stop"
    return ref[:limit], "length"

  streamed = [[] for _ in prompts]

  def on_tokens(rows, tokens):  # each step: the rows that drew a token, and their tokens
    for r, t in zip(rows, tokens):
      streamed[r].append(int(t))

  out = engine.generate_batch(m, params, prompts, jax.random.key(3), block_size=L32,
                              max_new_tokens=limits, temperature=0, eos_id=eos,
                              stop_sequences=[stop, [V + 5, V + 6, V + 7]], on_tokens=on_tokens)
  assert streamed == [c.tokens for c in out]
  reasons = set()
  for c, ref, limit in zip(out, refs, limits):
    tokens, reason = expected(ref, limit)
    assert (c.tokens, c.finish_reason) == (tokens, reason), c.prompt_index
    reasons.add(reason)
  assert reasons == {"stop", "length"}


@pytest.mark.parametrize("variant", [
    dict(name="bigram"),
    dict(pos="rope", norm_type="rmsnorm", activation="swiglu", n_kv_head=1, qk_norm=True,
         scan_layers=True, attention="dot_product")], ids=["bigram", "rope-all"])
def test_greedy_batch_equals_alone_for_the_other_models(variant):
  L = 8
  m, params = make(L, **variant)
  prompts = prompts_of_lengths([1, 3, 8, 3], seed=1)
  out = engine.generate_batch(m, params, prompts, jax.random.key(0), block_size=L,
                              max_new_tokens=L + 2, temperature=0)
  for c, p in zip(out, prompts):
    assert c.tokens == alone(m, params, p, L + 2, L)


def test_logprobs_are_the_full_forwards_log_softmax_at_the_sampled_tokens(gpt32):
  m, params = gpt32
  prompts = prompts_of_lengths([3, 6, 5], seed=2)
  out = engine.generate_batch(m, params, prompts, jax.random.key(1), block_size=L32,
                              max_new_tokens=8, n_samples=2, temperature=0.7, top_k=5,
                              top_p=0.9)
  assert [(c.prompt_index, c.sample_index) for c in out] == [(k, s) for k in range(3)
                                                             for s in range(2)]
  seqs = np.zeros((len(out), L32), np.int32)  # prompt + new tokens, right-padded
  for b, c in enumerate(out):
    seqs[b, :len(prompts[c.prompt_index]) + len(c.tokens)] = prompts[c.prompt_index] + c.tokens
  logp = jax.nn.log_softmax(m.apply({"params": params}, seqs).astype(jnp.float32), axis=-1)
  for b, c in enumerate(out):
    P = len(prompts[c.prompt_index])
    want = [float(logp[b, P - 1 + i, t]) for i, t in enumerate(c.tokens)]
    np.testing.assert_allclose(c.logprobs, want, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible_and_a_row_does_not_depend_on_its_batch(gpt32):
  m, params = gpt32
  prompts = prompts_of_lengths([4, 14, 11, 1], seed=3)
  kw = dict(block_size=L32, max_new_tokens=6, n_samples=3, temperature=1.0, top_k=8)
  a = engine.generate_batch(m, params, prompts, jax.random.key(7), **kw)
  b = engine.generate_batch(m, params, prompts, jax.random.key(7), **kw)
  c = engine.generate_batch(m, params, prompts, jax.random.key(8), **kw)
  assert [x.tokens for x in a] == [x.tokens for x in b]
  assert [x.tokens for x in a] != [x.tokens for x in c]
  assert len({tuple(x.tokens) for x in a}) > 1  # samples of one prompt differ
  # the same rows in batches of six rows (other buckets, other programs)
  d = engine.generate_batch(m, params, prompts, jax.random.key(7), max_batch=6, **kw)
  assert [x.tokens for x in a] == [x.tokens for x in d]


def test_one_program_per_bucket_for_any_mix_of_lengths(gpt32):
  m, params = gpt32
  rng = np.random.default_rng(4)
  kw = dict(block_size=L32, temperature=0)
  engine.generate_batch(m, params, prompts_of_lengths([9] * 6), jax.random.key(0),
                        max_new_tokens=5, **kw)
  before = engine.compiled_programs()
  for _ in range(4):  # 5 or 6 prompts of 1..12 tokens, the longest 9..12: one bucket (12)
    n = int(rng.integers(5, 7))
    lengths = [int(x) for x in rng.integers(1, 13, n - 1)] + [int(rng.integers(9, 13))]
    engine.generate_batch(m, params, prompts_of_lengths(lengths), jax.random.key(0),
                          max_new_tokens=[int(x) for x in rng.integers(5, 9, n)], **kw)
  assert engine.compiled_programs() == before
  engine.generate_batch(m, params, prompts_of_lengths([15] * 6), jax.random.key(0),
                        max_new_tokens=5, **kw)  # another prompt bucket: one more program
  assert engine.compiled_programs() == before + 1


def test_bad_requests_are_one_line(gpt32):
  m, params = gpt32
  for prompts in ([[1] * (L32 + 1)], [[]], []):
    with pytest.raises(UserError):
      engine.generate_batch(m, params, prompts, jax.random.key(0), block_size=L32,
                            max_new_tokens=4)
