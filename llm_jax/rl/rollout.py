"""Rollouts: P prompts -> G sampled completions each, as one training batch of B = P * G rows.

The samples come from the batched engine (llm_jax/decoding/engine.py, `generate_batch`), which
returns each new token's log-probability: log_softmax of the model's float32 logits at
temperature 1, at the sampled token. Those are the "old" log-probs of the GRPO ratio. Training
recomputes them with a full forward pass over the row (`policy_logprobs`); at the first update of
a batch the two must agree (the ratio is 1: `ratio_mismatch` in metrics.jsonl, tests/test_rl.py).
What makes them agree, or would not:
  - precision: both are float32 logits (model.dtype='float32' for RL; bfloat16 matmuls in the
    engine's cached steps and in the full pass round differently);
  - dropout: never applied in RL (the forward pass runs with train=False);
  - padding: each row is the prompt at positions 0.. then the completion, right-padded; a causal
    model's logits at a position ignore what follows, so the padding changes nothing;
  - positions: the engine's KV cache puts token i of a row at position i, as the full pass does.
With rl.temperature != 1 the sampler draws from a sharpened distribution while both log-probs are
the temperature-1 policy's: the ratio still starts at 1, but the samples are off-policy.

TEMPORARY ROUTE: until the engine exists on this branch (issue 40), `_generate_batch_fallback`
stands in for it with the same signature: llm_jax/decoding/lm.py's `generate` per prompt (G copies
of it), cut at the stop token, and the log-probs from a full forward pass (so the ratio is 1 by
construction there). It is used only when `llm_jax.decoding.engine` cannot be imported.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.rl.losses import token_logprobs

try:
  from llm_jax.decoding.engine import generate_batch
  ENGINE = "engine"
except ImportError:  # the temporary route (module docstring)
  generate_batch = None
  ENGINE = "fallback"


def policy_logprobs(model, params, tokens_BT):
  """(B, T) log-probs of each row's next tokens under params, float32, no dropout."""
  logits_BTV = model.apply({"params": params}, tokens_BT, train=False)
  return token_logprobs(logits_BTV, tokens_BT)


@dataclasses.dataclass
class _Completion:  # the engine's Completion's fields, for the temporary route
  prompt_index: int
  sample_index: int
  tokens: list
  logprobs: list
  finish_reason: str


@functools.partial(jax.jit, static_argnums=0)
def _forward_logprobs(model, params, tokens_BT):
  return policy_logprobs(model, params, tokens_BT)


def _generate_batch_fallback(model, params, prompts, rng, *, block_size, max_new_tokens,
                             n_samples=1, temperature=1.0, top_k=0, top_p=1.0, eos_id=None,
                             stop_sequences=(), on_tokens=None):
  """TEMPORARY (module docstring): generate_batch's contract from lm.generate + a forward pass."""
  from llm_jax.decoding.lm import generate
  del stop_sequences, on_tokens
  out = []
  for p, prompt in enumerate(prompts):
    prompt = np.asarray(prompt, np.int32)
    seq = generate(model, params, np.tile(prompt, (n_samples, 1)), jax.random.fold_in(rng, p),
                   max_new_tokens=max_new_tokens, block_size=block_size, temperature=temperature,
                   top_k=top_k, top_p=top_p)
    full = np.zeros((n_samples, block_size), np.int32)
    full[:, :seq.shape[1]] = seq[:, :block_size]
    logp = np.asarray(_forward_logprobs(model, params, jnp.asarray(full)))
    P = len(prompt)
    for g in range(n_samples):
      new = seq[g, P:].tolist()
      reason = "length"
      if eos_id is not None and eos_id in new:
        new, reason = new[:new.index(eos_id) + 1], "stop"
      out.append(_Completion(p, g, new, logp[g, P - 1:P - 1 + len(new)].tolist(), reason))
  return out


def sample(model, params, prompt_ids, rng, *, group_size, block_size, max_new_tokens,
           temperature, eos_id):
  """prompt_ids: P token lists -> the engine's P * G completions, prompt-major."""
  fn = generate_batch or _generate_batch_fallback
  out = fn(model, params, [list(map(int, p)) for p in prompt_ids], rng, block_size=block_size,
           max_new_tokens=max_new_tokens, n_samples=group_size, temperature=temperature,
           eos_id=eos_id)
  return sorted(out, key=lambda c: (c.prompt_index, c.sample_index))


def to_batch(prompt_ids, completions, group_size: int, T: int) -> dict:
  """Completions (prompt-major) -> numpy rows of T tokens: 'tokens' (B, T) int32 (prompt, then
  completion, then zeros), 'mask' (B, T) (1 at position t when token t + 1 was sampled) and
  'old_logp' (B, T) (the sampler's log-prob of token t + 1, at position t)."""
  B = len(completions)
  tokens, mask, old = (np.zeros((B, T), np.int32), np.zeros((B, T), np.float32),
                       np.zeros((B, T), np.float32))
  for i, c in enumerate(completions):
    prompt = prompt_ids[i // group_size]
    P, n = len(prompt), len(c.tokens)
    tokens[i, :P] = prompt
    tokens[i, P:P + n] = c.tokens
    mask[i, P - 1:P - 1 + n] = 1
    old[i, P - 1:P - 1 + n] = c.logprobs
  return {"tokens": tokens, "mask": mask, "old_logp": old}
