"""Autoregressive decoding for the language models, one jitted program per (batch, prompt, buffer).

Sampling (`sample_next`): greedy = argmax; otherwise logits / temperature, then top-k keeps the k
largest, top-p keeps the smallest set of tokens whose probability reaches p, and a token is drawn
from the softmax of what is left. Temperature 0 means greedy.

Context (as nanoGPT): the model sees at most block_size tokens; a sequence that has grown past
block_size is conditioned on its last block_size tokens, at positions 0..block_size-1.

`generate` keeps keys and values in a KV cache (the linen 'cache' collection) while the sequence
fits in block_size, so each new token costs one position's work. Past block_size the positions of
every kept token shift by one at each step, so, to give exactly nanoGPT's result, each further
token is computed by a full forward pass over the last block_size tokens, of which only the
last position's output is needed (`last_only`). `generate_uncached` always does the whole full
pass: the reference the cached path is tested against.

A windowed model (model.attn_window > 0) with rotary positions or none has no position past
which it cannot go: each layer attends to at most the last attn_window positions (a global one
to the last max_len), at their true positions. Its cache is a ring buffer of block_size slots
(attention.py), and `generate` decodes every token through it, past block_size too, instead of
the full-forward fallback; a prompt longer than block_size is fed into it a token at a time
after its first block_size. That is the model's own forward over the whole sequence (the
window mask), not nanoGPT's cropped context: tests/test_speedrun.py checks them token for token.
"""

import hashlib
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.fileio import atomic_write


def sample_next(logits_BV, rng, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                greedy: bool = False):
  """(B, V) logits -> (B,) int32 tokens."""
  if greedy or temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  neg_inf = jnp.finfo(jnp.float32).min
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
  if top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # a token is kept while the mass of the more likely tokens has not yet reached p
    n_keep_B1 = jnp.sum(mass_before_BV < top_p, axis=-1, keepdims=True)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
    logits_BV = jnp.where(logits_BV < cutoff_B1, neg_inf, logits_BV)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


def _window_logits(model, params, seq_BN, n, block_size):
  """Logits for the token after seq[:, :n], from the last block_size tokens (full forward)."""
  L = block_size
  start = jnp.maximum(n - L, 0)
  window_BL = jax.lax.dynamic_slice_in_dim(seq_BN, start, L, axis=1)
  logits_BLV = model.apply({"params": params}, window_BL)
  # causal: positions after n - 1 - start (zeros not yet generated) do not affect this one
  return jax.lax.dynamic_index_in_dim(logits_BLV, n - 1 - start, axis=1, keepdims=False)


def _past_window_logits(model, params, seq_BN, n, block_size):
  """The same as _window_logits for n >= block_size, where the token after seq[:, :n] is the
  window's last: only that position's logits are computed (the last layer's queries and FFN and
  the head see it alone), the cheapest exact full forward."""
  window_BL = jax.lax.dynamic_slice_in_dim(seq_BN, n - block_size, block_size, axis=1)
  return model.apply({"params": params}, window_BL, last_only=True)[:, 0]


def ring_decoding(model) -> bool:
  """Whether `generate` decodes `model` through a ring-buffer cache past block_size (above)."""
  cfg = getattr(model, "cfg", None)
  return bool(getattr(cfg, "attn_window", 0)) and cfg.pos in ("rope", "none")


def _buffer(prompt_BP, length: int):
  """(B, length) int32 tokens: the prompt, then zeros where the new tokens will go."""
  B, P = prompt_BP.shape
  return jnp.zeros((B, length), jnp.int32).at[:, :P].set(prompt_BP)


@partial(jax.jit, static_argnums=(0,), static_argnames=(
    "max_new_tokens", "block_size", "temperature", "top_k", "top_p", "greedy"))
def generate_uncached(model, params, prompt_BP, rng, *, max_new_tokens, block_size,
                      temperature=1.0, top_k=0, top_p=1.0, greedy=False):
  """(B, P) prompt -> (B, P + max_new_tokens), each step a full forward over the context."""
  P = prompt_BP.shape[1]
  sample = partial(sample_next, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)

  def step(seq, i):
    n = P + i
    logits_BV = _window_logits(model, params, seq, n, block_size)
    tok_B = sample(logits_BV, jax.random.fold_in(rng, i))
    return jax.lax.dynamic_update_slice_in_dim(seq, tok_B[:, None], n, axis=1), None

  seq, _ = jax.lax.scan(step, _buffer(prompt_BP, max(P + max_new_tokens, block_size)),
                        jnp.arange(max_new_tokens))
  return seq[:, :P + max_new_tokens]


def init_cache(model, batch_size: int, block_size: int):
  """An empty KV cache of block_size positions (zeros, index 0); {} for a model without one."""
  shapes = jax.eval_shape(partial(model.init, decode=True), jax.random.key(0),
                          jnp.zeros((batch_size, block_size), jnp.int32))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes.get("cache", {}))


def buffer_length(prompt_len: int, max_new_tokens: int, block_size: int) -> int:
  """The token buffer one compiled `generate` program serves: the next power of two that holds
  prompt and new tokens (at least block_size), so that requests of other lengths in it reuse it."""
  need = max(prompt_len + max_new_tokens, block_size)
  return 1 << (need - 1).bit_length()


def generate(model, params, prompt_BP, rng, *, max_new_tokens, block_size, temperature=1.0,
             top_k=0, top_p=1.0, greedy=False, program_dir=None, on_tokens=None):
  """(B, P) prompt -> (B, P + max_new_tokens) numpy tokens, with a KV cache while the sequence
  fits block_size. max_new_tokens is a value of the program, not its shape: one program (per
  buffer_length) serves every length. With program_dir the program is also kept there, exported
  (`exported_program`), and a later process runs it without tracing the model again.
  on_tokens: called with each step's (B,) new tokens as they are drawn (a host callback in the
  program: a static argument, so each callback compiles its own program, which is not exported;
  streaming serves one interactive sample, `llm-jax generate --stream`)."""
  P = prompt_BP.shape[1]
  static = dict(buffer_len=buffer_length(P, max_new_tokens, block_size), block_size=block_size,
                temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                key_impl=str(jax.random.key_impl(rng)), on_tokens=on_tokens)
  args = (params, jnp.asarray(prompt_BP, jnp.int32), jax.random.key_data(rng),
          jnp.int32(max_new_tokens))
  fn = partial(_generate, model, **static)
  if program_dir and on_tokens is None:
    fn = exported_program(fn, args, program_dir,
                          key=(repr(model), sorted(static.items()), code_digest()))
  seq = fn(*args)
  if on_tokens is not None:
    jax.effects_barrier()  # every token has been handed over
  return np.asarray(seq)[:, :P + max_new_tokens]  # on the host: no program per length


def exported_program(fn, args, directory: str, key):
  """fn (jittable) as a jax.export program for args' shapes, kept in `directory` under a digest
  of `key` (what fn is besides its arguments), the arguments' shapes and dtypes, the JAX version
  and the devices. The first call exports and saves it; a later process loads it instead of
  tracing fn (for a flax model, most of a short decode's time). An unreadable file is exported
  anew; a folder that cannot be written keeps nothing."""
  leaves, tree = jax.tree.flatten(args)
  device = jax.devices()[0]
  ident = repr((key, str(tree), [(x.shape, str(x.dtype)) for x in leaves], jax.__version__,
                device.platform, device.device_kind))
  path = os.path.join(directory, hashlib.sha256(ident.encode()).hexdigest()[:32] + ".jaxexport")
  try:
    with open(path, "rb") as f:
      return jax.export.deserialize(bytearray(f.read())).call
  except Exception:  # noqa: BLE001 -- missing, or damaged (in many ways): export it anew
    pass
  exported = jax.export.export(jax.jit(fn))(*args)
  try:
    with atomic_write(path, "wb") as f:  # whole or not at all, with other processes writing it
      f.write(exported.serialize())
  except OSError:  # a cache that cannot be written costs the next process a trace, nothing more
    pass
  return exported.call


def code_digest() -> str:
  """A digest of the code a decode program is made of (the packages models/ and decoding/), so
  that an exported program of other code is never reused."""
  root, h = os.path.dirname(os.path.dirname(os.path.abspath(__file__))), hashlib.sha256()
  for package in ("models", "decoding"):
    folder = os.path.join(root, package)
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".py")):
      with open(os.path.join(folder, name), "rb") as f:
        h.update(f"{package}/{name}".encode() + f.read())
  return h.hexdigest()


@partial(jax.jit, static_argnums=(0,), static_argnames=(
    "buffer_len", "block_size", "temperature", "top_k", "top_p", "greedy", "key_impl",
    "on_tokens"))
def _generate(model, params, prompt_BP, rng_data, n_new, *, buffer_len, block_size, temperature,
              top_k, top_p, greedy, key_impl, on_tokens=None):
  B, P = prompt_BP.shape
  rng = jax.random.wrap_key_data(rng_data, impl=key_impl)  # the key as raw data: exportable
  L = block_size
  sample = partial(sample_next, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)

  def cached(tokens_BT, cache):
    logits_BTV, out = model.apply({"params": params, "cache": cache}, tokens_BT, decode=True,
                                  mutable=["cache"])
    return logits_BTV[:, -1], out.get("cache", {})

  seq = _buffer(prompt_BP, buffer_len)
  cache = init_cache(model, B, L)
  ring = ring_decoding(model)
  if ring:  # the first block_size prompt tokens in one pass, the rest one at a time
    logits_BV, cache = cached(prompt_BP[:, :min(P, L)], cache)
    logits_BV, cache = jax.lax.fori_loop(
        min(P, L), P, lambda i, c: cached(jax.lax.dynamic_slice_in_dim(prompt_BP, i, 1, 1), c[1]),
        (logits_BV, cache))
  elif P <= L:  # prefill the prompt into the cache in one pass
    logits_BV, cache = cached(prompt_BP, cache)
  else:
    logits_BV = _past_window_logits(model, params, seq, P, L)

  def draw(seq, logits_BV, i):
    tok_B = sample(logits_BV, jax.random.fold_in(rng, i))
    if on_tokens is not None:  # handed to the host in order, as drawn
      jax.debug.callback(lambda t: on_tokens(np.asarray(t)), tok_B, ordered=True)
    return tok_B, jax.lax.dynamic_update_slice_in_dim(seq, tok_B[:, None], P + i, axis=1)

  def cached_step(i, carry):  # token P + i still has a slot in the cache
    seq, logits_BV, cache = carry
    tok_B, seq = draw(seq, logits_BV, i)
    logits_BV, cache = cached(tok_B[:, None], cache)
    return seq, logits_BV, cache

  def window_step(i, carry):  # past block_size: a full forward over the last block_size tokens
    seq, logits_BV = carry
    tok_B, seq = draw(seq, logits_BV, i)
    return seq, _past_window_logits(model, params, seq, P + i + 1, L)

  # steps whose new token fits in the cache: for a ring, every one
  n_cached = n_new if ring else jnp.clip(L - P, 0, n_new)
  seq, logits_BV, _ = jax.lax.fori_loop(0, n_cached, cached_step, (seq, logits_BV, cache))
  seq, _ = jax.lax.fori_loop(n_cached, n_new, window_step, (seq, logits_BV))
  return seq
