import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import decoding
from llm_jax.config import default_config
from llm_jax.models import build_model

V, L = 13, 8  # vocabulary, block_size


def make(**model):
  c = default_config().model
  c.update(n_layer=2, n_head=2, n_embd=16, block_size=L)
  c.update(model)
  m = build_model(c, V)
  return m, nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"])


VARIANTS = [dict(norm=n, pos=p) for n, p in itertools.product(["pre", "post"],
                                                             ["learned", "sinusoidal"])]
VARIANTS += [dict(norm="pre", pos="learned", scan_layers=True), dict(name="bigram")]
# the switches of today's models: the cache holds rotated keys, n_kv_head heads
VARIANTS += [dict(pos="rope", norm_type="rmsnorm", activation="swiglu", n_kv_head=1, qk_norm=True),
             dict(pos="rope", n_kv_head=1, scan_layers=True),
             dict(pos="rope", n_kv_head=1, attention="dot_product")]
# bf16 matmuls (what dtype='auto' picks on a CPU with AMX or AVX-512 BF16): the cache's einsums
# in bf16, for one query per key head and for two
VARIANTS += [dict(dtype="bfloat16"), dict(dtype="bfloat16", pos="rope", n_kv_head=1)]
ids = lambda v: "-".join(f"{k}={x}" for k, x in v.items())


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_cached_logits_equal_the_full_forward(variant):
  m, params = make(**variant)
  idx = jax.random.randint(jax.random.key(1), (2, L), 0, V)
  full = m.apply({"params": params}, idx)
  step = jax.jit(lambda cache, piece: m.apply({"params": params, "cache": cache}, piece,
                                              decode=True, mutable=["cache"]))
  cache = decoding.init_cache(m, 2, L)
  # a prefill of 3 positions, then one position at a time
  pieces = [idx[:, :3]] + [idx[:, t:t + 1] for t in range(3, L)]
  outs = []
  for piece in pieces:
    logits, mutated = step(cache, piece)
    cache = mutated.get("cache", {})
    outs.append(logits)
  # bf16: both sides round the same inputs to bf16 and accumulate in f32, in other orders
  tol = 1e-4 if variant.get("dtype") == "bfloat16" else 1e-5
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=tol, rtol=tol)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_the_last_positions_logits_alone_equal_the_full_forwards_last(variant):
  """last_only (the step past the window): the last Block's queries and FFN see one position."""
  m, params = make(**variant)
  idx = jax.random.randint(jax.random.key(5), (2, L), 0, V)
  full = m.apply({"params": params}, idx)
  last = m.apply({"params": params}, idx, last_only=True)
  assert last.shape == (2, 1, V)
  np.testing.assert_allclose(last, full[:, -1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant,prompt_len", [
    (dict(norm="pre", pos="learned"), 1), (dict(norm="post", pos="sinusoidal"), L + 3),
    (dict(norm="pre", pos="learned", scan_layers=True), L + 3), (dict(name="bigram"), 5),
    (dict(pos="rope", n_kv_head=1, qk_norm=True, activation="swiglu"), 1)],
    ids=["pre-learned", "post-sinusoidal-long-prompt", "scan-long-prompt", "bigram",
         "rope-mqa-qknorm-swiglu"])
def test_greedy_with_cache_equals_without_past_block_size(variant, prompt_len):
  m, params = make(**variant)
  prompt = jax.random.randint(jax.random.key(2), (2, prompt_len), 0, V)
  kw = dict(max_new_tokens=3 * L, block_size=L, greedy=True)
  cached = decoding.generate(m, params, prompt, jax.random.key(0), **kw)
  plain = decoding.generate_uncached(m, params, prompt, jax.random.key(0), **kw)
  assert cached.shape == (2, prompt_len + 3 * L)
  np.testing.assert_array_equal(cached, plain)
  np.testing.assert_array_equal(cached[:, :prompt_len], prompt)


@pytest.mark.parametrize("scan", [False, True])
def test_the_kv_cache_holds_the_kv_heads_only(scan):
  m, _ = make(n_head=4, n_kv_head=2, scan_layers=scan)
  cache = decoding.init_cache(m, 3, L)
  attn = cache["h"]["block"]["attn"] if scan else cache["h_0"]["attn"]
  lead = (2,) if scan else ()  # scanned: the layer axis first
  # heads-major, (B, n_kv_head, L, D): the attention's einsums batch over (B, heads) without a
  # copy of the cache
  assert attn["k"].shape == attn["v"].shape == lead + (3, 2, L, 4)


def test_past_block_size_the_context_is_the_last_block_size_tokens():
  """nanoGPT's rule: the token after a long sequence depends only on its last block_size tokens."""
  m, params = make()
  seq = jax.random.randint(jax.random.key(3), (1, 3 * L), 0, V)
  other_start = seq.at[0, :2 * L].set((seq[0, :2 * L] + 5) % V)
  kw = dict(max_new_tokens=1, block_size=L, greedy=True)
  a = decoding.generate(m, params, seq, jax.random.key(0), **kw)[0, -1]
  b = decoding.generate(m, params, other_start, jax.random.key(0), **kw)[0, -1]
  assert a == b
  expected = jnp.argmax(m.apply({"params": params}, seq[:, -L:])[0, -1])
  assert a == expected


def test_sampled_cached_equals_uncached_for_the_same_seed():
  m, params = make()
  prompt = jnp.zeros((3, 2), jnp.int32)
  kw = dict(max_new_tokens=2 * L, block_size=L, temperature=0.8, top_k=5, top_p=0.9)
  np.testing.assert_array_equal(decoding.generate(m, params, prompt, jax.random.key(4), **kw),
                                decoding.generate_uncached(m, params, prompt, jax.random.key(4), **kw))


LOGITS = jnp.log(jnp.array([[0.05, 0.4, 0.02, 0.3, 0.13, 0.1]]))  # a known distribution


def draws(n=2000, **kw):
  keys = jax.random.split(jax.random.key(0), n)
  return np.asarray(jax.vmap(lambda k: decoding.sample_next(LOGITS, k, **kw))(keys))[:, 0]


def test_top_k_1_and_temperature_0_are_greedy():
  assert set(draws(top_k=1)) == {1}
  assert set(draws(temperature=0.0)) == {1}
  assert set(draws(greedy=True, top_k=3)) == {1}


def test_top_k_keeps_the_k_most_likely():
  assert set(draws(top_k=3)) == {1, 3, 4}


def test_top_p_never_samples_outside_the_nucleus():
  # sorted: 0.4 (1), 0.3 (3), 0.13 (4), 0.1 (5), 0.05 (0), 0.02 (2)
  assert set(draws(top_p=0.65)) == {1, 3}  # 0.4 < 0.65 <= 0.7
  assert set(draws(top_p=0.7)) == {1, 3}  # reaches p exactly with two tokens
  assert set(draws(top_p=0.71)) == {1, 3, 4}
  assert set(draws(top_p=0.1)) == {1}  # the most likely token is always kept
  assert set(draws(top_p=1.0)) == {0, 1, 2, 3, 4, 5}


def test_sampling_frequencies_follow_the_distribution():
  counts = np.bincount(draws(n=20000), minlength=6) / 20000
  np.testing.assert_allclose(counts, np.exp(LOGITS[0]), atol=0.015)


def test_the_same_seed_gives_the_same_sample_and_seeds_differ():
  m, params = make()
  prompt = jnp.zeros((1, 1), jnp.int32)
  kw = dict(max_new_tokens=20, block_size=L)
  a = decoding.generate(m, params, prompt, jax.random.key(7), **kw)
  np.testing.assert_array_equal(a, decoding.generate(m, params, prompt, jax.random.key(7), **kw))
  assert not np.array_equal(a, decoding.generate(m, params, prompt, jax.random.key(8), **kw))


def test_an_exported_program_gives_the_same_tokens_without_tracing_the_model(tmp_path,
                                                                          monkeypatch):
  m, params = make()
  prompt = jnp.asarray([[1, 2, 3]], jnp.int32)
  gen = lambda n, seed=3: decoding.generate(m, params, prompt, jax.random.key(seed),
                                            max_new_tokens=n, block_size=L, temperature=1.0,
                                            program_dir=str(tmp_path))
  plain = decoding.generate(m, params, prompt, jax.random.key(3), max_new_tokens=12,
                            block_size=L, temperature=1.0)
  first = gen(12)  # traces and exports the program
  np.testing.assert_array_equal(first, plain)
  assert len(list(tmp_path.glob("*.jaxexport"))) == 1
  decoding.lm._generate.clear_cache()  # as a new process
  again, shorter, other_seed = gen(12), gen(10), gen(12, seed=4)  # one buffer: the saved program
  assert decoding.lm._generate._cache_size() == 0  # the model was not traced
  np.testing.assert_array_equal(again, plain)
  np.testing.assert_array_equal(shorter, plain[:, :13])
  assert not np.array_equal(other_seed, plain)
  # a damaged file is exported anew, and another model does not read this one's program
  saved = next(tmp_path.glob("*.jaxexport"))
  saved.write_bytes(b"not a program")
  np.testing.assert_array_equal(gen(12), plain)
  assert saved.read_bytes() != b"not a program"
  m2, params2 = make(n_layer=1)
  decoding.generate(m2, params2, prompt, jax.random.key(3), max_new_tokens=12, block_size=L,
                    program_dir=str(tmp_path))
  assert len(list(tmp_path.glob("*.jaxexport"))) == 2
  # nor does other code: the key holds a digest of models/ and decoding/
  monkeypatch.setattr(decoding.lm, "code_digest", lambda: "other code")
  np.testing.assert_array_equal(gen(12), plain)
  assert len(list(tmp_path.glob("*.jaxexport"))) == 3


def test_lengths_in_one_buffer_share_one_program_and_each_is_a_prefix_of_the_longer():
  m, params = make()
  prompt = jnp.zeros((2, 1), jnp.int32)
  gen = lambda n: decoding.generate(m, params, prompt, jax.random.key(3), max_new_tokens=n,
                                    block_size=L, temperature=1.0)
  assert decoding.buffer_length(1, 9, L) == decoding.buffer_length(1, 14, L) == 16
  before = decoding.lm._generate._cache_size()
  short, long = gen(9), gen(14)  # both past block_size: cached steps, then window steps
  assert decoding.lm._generate._cache_size() == before + 1
  assert short.shape == (2, 10) and long.shape == (2, 15)
  np.testing.assert_array_equal(short, long[:, :10])
  ref = decoding.generate_uncached(m, params, prompt, jax.random.key(3), max_new_tokens=14,
                                   block_size=L, temperature=1.0)
  np.testing.assert_array_equal(long, ref)
