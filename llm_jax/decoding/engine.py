"""The batched generation engine: many prompts of different lengths decoded in one jitted program.

    completions = generate_batch(model, params, [[5, 3], [7, 1, 2, 9]], jax.random.key(0),
                                 block_size=256, max_new_tokens=[20, 50], n_samples=4,
                                 temperature=0.8, top_k=50, eos_id=0)

Layout: every row (a prompt's sample) keeps its own length n_b. The prompts are right-padded to
one length, the bucket of the longest (`bucket`: powers of two and the points 1.5x between them,
as the harness pads its batches), and prefilled in one pass; row b's next token then goes to cache
slot n_b and attends to slots <= n_b (the models' decode with positions_BT: each row's positions
are its cache slots). The padding a short prompt's prefill wrote past its end is never read: a
query sees only slots <= its own, and slot n_b is written before anything reads it. So a row
reads exactly the keys, values and positions of its prompt decoded alone (decoding/lm.py), and
gives its tokens.

Past block_size a row goes on as decoding/lm.py does (nanoGPT's window): each further token is
computed by a full forward over the row's last block_size tokens. In a batch that full forward
runs for every row on the steps where any row needs it (a lax.cond: never when every row fits).

Each row stops at its eos token, at the end of one of the stop sequences (token ids, matched in
its new tokens), or after its max_new_tokens; the loop (a lax.while_loop) ends when every row
has. Until then a finished row is still computed, its tokens dropped: `finished_share` reports
the share of row-steps so spent.

Sampling: greedy (temperature 0), or temperature, top-k and top-p (decoding/lm.py's sample_next),
each row with its own key, fold_in(fold_in(rng, prompt index), sample index), folded with the step:
a row's tokens do not depend on what else is in its batch or how it was bucketed.

Programs: one per (batch bucket, prompt bucket, new-token bucket, model, sampling switches); the
number of rows is padded to its bucket too (rows that stop at once). `compiled_programs` counts
them.
"""

import dataclasses
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.decoding.lm import init_cache, sample_next
from llm_jax.errors import UserError

# the shortest padded prompt (and new-token buffer): shorter ones share its program
MIN_BUCKET = 8


@dataclasses.dataclass
class Completion:
  prompt_index: int  # which prompt (input order)
  sample_index: int  # 0..n_samples-1
  tokens: list[int]  # the new tokens only (a matched stop sequence included, EOS included)
  # per new token: log_softmax of the model's float32 logits at temperature 1 (before
  # temperature/top-k/top-p), at the sampled token
  logprobs: list[float]
  finish_reason: str  # "stop" (eos or a stop sequence) | "length"


def bucket(n: int, smallest: int = MIN_BUCKET) -> int:
  """The padded size for n: the smallest of smallest * 2^k and 1.5 * smallest * 2^k that holds n."""
  b = smallest
  while True:
    if n <= b:
      return b
    if n <= b * 3 // 2:
      return b * 3 // 2
    b *= 2


# the engine's program (jax.jit's cache) is traced once per shape; this counts the traces
_TRACES = [0]


def compiled_programs() -> int:
  """How many engine programs have been traced (each compiled once) in this process."""
  return _TRACES[0]


# where a streaming program's tokens go as they are drawn (generate_batch's on_tokens)
_ON_TOKENS = [None]


def _emit(tok_R, emitted_R):
  if _ON_TOKENS[0] is not None:
    _ON_TOKENS[0](np.asarray(tok_R), np.asarray(emitted_R))


def _row_window(seq_RS, end_R, L):
  """(R, L): each row's tokens end_R - L .. end_R - 1 (end_R >= L)."""
  idx_RL = (end_R - L)[:, None] + jnp.arange(L)
  return jnp.take_along_axis(seq_RS, idx_RL, axis=1)


@partial(jax.jit, static_argnums=(0,), static_argnames=(
    "block_size", "n_buffer", "temperature", "top_k", "top_p", "key_impl", "stream"))
def _decode(model, params, prompt_RP, len_R, limit_R, keys_R, stops_JS, stop_valid_JS, eos,
            cache=None, start_R=None, *, block_size, n_buffer, temperature, top_k, top_p,
            key_impl, stream):
  """prompt_RP: right-padded prompts; len_R their lengths; limit_R each row's max new tokens (0:
  a padding row); keys_R its key data. stops_JS: the stop sequences right-aligned, stop_valid_JS
  where they have a token; eos: the eos id or -1. cache, start_R: a cache already holding each
  row's first start_R tokens, which the prompt continues (`extend`; then start + prompt + new
  tokens must fit block_size: the window past it reads this call's tokens only). -> (new tokens
  (R, n_buffer), their logprobs, counts (R,), stopped (R,), steps run, the cache)."""
  _TRACES[0] += 1
  R, P = prompt_RP.shape
  L = block_size
  S = stops_JS.shape[1]
  keys_R = jax.random.wrap_key_data(keys_R, impl=key_impl)
  greedy = temperature == 0

  def cached(tokens_RT, slots_RT, cache):
    logits_RTV, out = model.apply({"params": params, "cache": cache}, tokens_RT, decode=True,
                                  positions_BT=slots_RT, mutable=["cache"])
    return logits_RTV, out.get("cache", {})

  # prefill: every row's prompt at positions start..start+P-1; its next token's logits at its
  # last one
  if cache is None:  # slots up to P + n_buffer - 1 are written: a shorter cache is less to read
    cache, start_R = init_cache(model, R, min(L, P + n_buffer)), jnp.zeros(R, jnp.int32)
  logits_RPV, cache = cached(prompt_RP, jnp.minimum(start_R[:, None] + jnp.arange(P), L - 1),
                             cache)
  logits_RV = jnp.take_along_axis(logits_RPV, (len_R - 1)[:, None, None], axis=1)[:, 0]
  seq_RS = jnp.zeros((R, P + n_buffer), jnp.int32).at[:, :P].set(prompt_RP)

  def sample(logits_RV, i):
    if greedy:
      return jnp.argmax(logits_RV, axis=-1).astype(jnp.int32)
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, i)
    draw = lambda logits_V, key: sample_next(logits_V[None], key, temperature, top_k, top_p)[0]
    return jax.vmap(draw)(logits_RV, keys)

  def cond(carry):
    i, done_R = carry[0], carry[4]
    return (i < n_buffer) & ~jnp.all(done_R)

  def step(carry):
    i, seq_RS, logits_RV, cache, done_R, count_R, stopped_R, tail_RS, out_RN, logp_RN = carry
    tok_R = sample(logits_RV, i)
    logp_R = jnp.take_along_axis(jax.nn.log_softmax(logits_RV.astype(jnp.float32), axis=-1),
                                 tok_R[:, None], axis=1)[:, 0]
    live_R = ~done_R
    n_R = len_R + i  # where each row's new token goes in seq_RS
    slot_R = start_R + n_R  # and its position (its slot in the cache)
    rows = jnp.arange(R)
    seq_RS = seq_RS.at[rows, n_R].set(tok_R)
    out_RN = out_RN.at[:, i].set(jnp.where(live_R, tok_R, 0))
    logp_RN = logp_RN.at[:, i].set(jnp.where(live_R, logp_R, 0.0))
    if stream:
      jax.debug.callback(_emit, tok_R, live_R, ordered=True)
    count_R = count_R + live_R
    # stop: the eos token, or the last S new tokens ending in a stop sequence
    tail_RS = jnp.concatenate([tail_RS[:, 1:], tok_R[:, None]], axis=1)
    match_RJ = jnp.all((tail_RS[:, None, :] == stops_JS[None]) | ~stop_valid_JS[None], axis=-1)
    hit_R = (tok_R == eos) | jnp.any(match_RJ & jnp.any(stop_valid_JS, axis=-1)[None], axis=-1)
    stopped_R = stopped_R | (live_R & hit_R)
    done_R = done_R | stopped_R | (count_R >= limit_R)
    # the next logits: from the cache while the row's token had a slot (n < L), else from a full
    # forward over its last L tokens (only run when some row needs it)
    logits_RTV, cache = cached(tok_R[:, None], jnp.minimum(slot_R, L - 1)[:, None], cache)
    past_R = slot_R >= L

    def window(_):
      window_RL = _row_window(seq_RS, jnp.maximum(n_R + 1, L), L)
      return model.apply({"params": params}, window_RL, last_only=True)[:, 0]

    window_RV = jax.lax.cond(jnp.any(past_R & ~done_R), window,
                             lambda _: jnp.zeros_like(logits_RV), None)
    logits_RV = jnp.where(past_R[:, None], window_RV, logits_RTV[:, 0])
    return (i + 1, seq_RS, logits_RV, cache, done_R, count_R, stopped_R, tail_RS, out_RN,
            logp_RN)

  zeros = jnp.zeros(R, jnp.int32)
  carry = (jnp.int32(0), seq_RS, logits_RV, cache, limit_R <= 0, zeros, zeros.astype(bool),
           jnp.full((R, S), -1, jnp.int32), jnp.zeros((R, n_buffer), jnp.int32),
           jnp.zeros((R, n_buffer), jnp.float32))
  carry = jax.lax.while_loop(cond, step, carry)
  steps, _, _, cache, _, count_R, stopped_R, _, out_RN, logp_RN = carry
  return out_RN, logp_RN, count_R, stopped_R, steps, cache


# the last call's share of row-steps spent on rows that had already finished (or were padding)
finished_share = [0.0]


def generate_batch(model, params, prompts: Sequence[Sequence[int]], rng, *, block_size: int,
                   max_new_tokens: int | Sequence[int], n_samples: int = 1,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   eos_id: int | None = None, stop_sequences: Sequence[Sequence[int]] = (),
                   on_tokens=None, max_batch: int | None = None,
                   greedy: bool = False) -> list[Completion]:
  """Completions of every prompt, n_samples each, prompt-major (prompt 0's samples first).

  max_new_tokens: one for all prompts, or one per prompt. temperature 0 (or greedy) is greedy.
  on_tokens(completion_indices, tokens): called as each step's tokens are drawn, with the
  indices (into the returned list) of the rows that drew one and their tokens (numpy arrays).
  max_batch: at most this many rows per program run (the prompts sorted by length, so that a
  batch's rows are of similar lengths); default all at once."""
  prompts = [list(map(int, p)) for p in prompts]
  if not prompts:
    raise UserError("no prompts to generate from: give at least one")
  limits = ([int(max_new_tokens)] * len(prompts) if np.ndim(max_new_tokens) == 0
            else [int(m) for m in max_new_tokens])
  if len(limits) != len(prompts):
    raise UserError(f"max_new_tokens has {len(limits)} values for {len(prompts)} prompts: give "
                    f"one for all or one per prompt")
  for k, p in enumerate(prompts):
    if not 1 <= len(p) <= block_size:
      raise UserError(f"prompt {k} has {len(p)} tokens: a prompt needs 1 to block_size="
                      f"{block_size} tokens (cut it, or use a model with a longer block_size)")
  if any(m < 0 for m in limits) or n_samples < 1:
    raise UserError("max_new_tokens must be >= 0 and n_samples >= 1")
  greedy = greedy or temperature == 0
  stops = [list(map(int, s)) for s in stop_sequences if len(s)]
  S = max([len(s) for s in stops], default=1)
  stops_JS = np.full((max(len(stops), 1), S), -1, np.int32)
  valid_JS = np.zeros(stops_JS.shape, bool)
  for j, s in enumerate(stops):
    stops_JS[j, S - len(s):], valid_JS[j, S - len(s):] = s, True

  # rows: (prompt index, sample index), prompt-major; batches of rows sorted by prompt length
  rows = [(k, s) for k in range(len(prompts)) for s in range(n_samples)]
  order = sorted(range(len(rows)), key=lambda r: len(prompts[rows[r][0]]))
  size = max_batch or len(rows)
  results: list[Completion | None] = [None] * len(rows)
  key_impl = str(jax.random.key_impl(rng))
  spent = wasted = 0
  for start in range(0, len(order), size):
    batch = order[start:start + size]
    R = bucket(len(batch), 1)
    P = min(bucket(max(len(prompts[rows[r][0]]) for r in batch)), block_size)
    N = bucket(max(1, max(limits[rows[r][0]] for r in batch)))
    prompt_RP = np.zeros((R, P), np.int32)
    len_R, limit_R = np.ones(R, np.int32), np.zeros(R, np.int32)
    keys = []
    for b, r in enumerate(batch):
      k, s = rows[r]
      prompt_RP[b, :len(prompts[k])], len_R[b], limit_R[b] = prompts[k], len(prompts[k]), limits[k]
      keys.append(jax.random.fold_in(jax.random.fold_in(rng, k), s))
    keys += [rng] * (R - len(batch))
    keys_R = jax.random.key_data(jnp.stack(keys))
    emitted_rows = np.asarray(batch)
    if on_tokens is not None:
      _ON_TOKENS[0] = lambda tok_R, live_R: on_tokens(
          emitted_rows[live_R[:len(batch)]], tok_R[:len(batch)][live_R[:len(batch)]])
    try:
      out = _decode(model, params, jnp.asarray(prompt_RP), jnp.asarray(len_R),
                    jnp.asarray(limit_R), keys_R, jnp.asarray(stops_JS), jnp.asarray(valid_JS),
                    jnp.int32(-1 if eos_id is None else eos_id), block_size=block_size,
                    n_buffer=N, temperature=0.0 if greedy else float(temperature),
                    top_k=int(top_k), top_p=float(top_p), key_impl=key_impl,
                    stream=on_tokens is not None)
      out_RN, logp_RN, count_R, stopped_R, steps = map(np.asarray, out[:5])
      if on_tokens is not None:
        jax.effects_barrier()
    finally:
      _ON_TOKENS[0] = None
    spent += R * int(steps)
    wasted += R * int(steps) - int(count_R.sum())
    for b, r in enumerate(batch):
      k, s = rows[r]
      n = int(count_R[b])
      results[r] = Completion(k, s, out_RN[b, :n].tolist(), logp_RN[b, :n].tolist(),
                              "stop" if stopped_R[b] else "length")
  finished_share[0] = wasted / spent if spent else 0.0
  return results


def extend(model, params, cache, start: int, new_ids: Sequence[int], rng, *, block_size: int,
           max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           eos_id: int | None = None, on_tokens=None):
  """One sequence continued in its KV cache (a chat, turn after turn): `cache` holds its first
  `start` tokens (None: an empty one, start 0); new_ids are prefilled after them, then up to
  max_new_tokens are drawn. -> (Completion, the cache, which now holds every token but the last
  drawn one's successor: start + len(new_ids) + the new tokens). on_tokens(tokens) is called
  with each drawn token (a (1,) array). start + len(new_ids) + max_new_tokens must fit
  block_size (past it there is no cache to continue)."""
  L = block_size
  if not new_ids or start + len(new_ids) + max_new_tokens > L:
    raise UserError(f"{start} cached + {len(new_ids)} new tokens + {max_new_tokens} to draw do "
                    f"not fit model.block_size={L}: start again from a shorter context")
  if cache is None:
    cache, start = init_cache(model, 1, L), 0
  P = min(bucket(len(new_ids)), L - start)
  N = bucket(max(1, max_new_tokens))
  prompt_1P = np.zeros((1, P), np.int32)
  prompt_1P[0, :len(new_ids)] = new_ids
  if on_tokens is not None:
    _ON_TOKENS[0] = lambda tok_R, live_R: on_tokens(tok_R[live_R]) if live_R.any() else None
  try:
    out = _decode(model, params, jnp.asarray(prompt_1P), jnp.asarray([len(new_ids)], jnp.int32),
                  jnp.asarray([max_new_tokens], jnp.int32),
                  jax.random.key_data(jnp.stack([rng])), jnp.full((1, 1), -1, jnp.int32),
                  jnp.zeros((1, 1), bool), jnp.int32(-1 if eos_id is None else eos_id), cache,
                  jnp.asarray([start], jnp.int32), block_size=L, n_buffer=N,
                  temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                  key_impl=str(jax.random.key_impl(rng)), stream=on_tokens is not None)
    if on_tokens is not None:
      jax.effects_barrier()
  finally:
    _ON_TOKENS[0] = None
  out_RN, logp_RN, count_R, stopped_R, _ = map(np.asarray, out[:5])
  n = int(count_R[0])
  return (Completion(0, 0, out_RN[0, :n].tolist(), logp_RN[0, :n].tolist(),
                     "stop" if stopped_R[0] else "length"), out[5])
