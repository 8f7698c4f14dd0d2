"""Rollouts: P prompts -> G sampled completions each, as one training batch of B = P * G rows.

The samples come from the batched engine (llm_jax/decoding/engine.py, `generate_batch`), which
returns each new token's log-probability: log_softmax of the model's float32 logits at
temperature 1, at the sampled token. Those are the "old" log-probs of the GRPO ratio. Training
recomputes them with a full forward pass over the row (`policy_logprobs`); at the first update of
a batch the two must agree (the ratio is 1: `ratio_mismatch` in metrics.jsonl, tests/test_rl_loop.py).
What makes them agree, or would not:
  - precision: both are float32 logits (model.dtype='float32' for RL; bfloat16 matmuls in the
    engine's cached steps and in the full pass round differently);
  - dropout: never applied in RL (the forward pass runs with train=False);
  - padding: each row is the prompt at positions 0.. then the completion, right-padded; a causal
    model's logits at a position ignore what follows, so the padding changes nothing;
  - positions: the engine's KV cache puts token i of a row at position i, as the full pass does.
With rl.temperature != 1 the sampler draws from a sharpened distribution while both log-probs are
the temperature-1 policy's: the ratio still starts at 1, but the samples are off-policy.
"""

import numpy as np

from llm_jax.decoding.engine import generate_batch
from llm_jax.rl.losses import token_logprobs


def policy_logprobs(model, params, tokens_BT):
  """(B, T) log-probs of each row's next tokens under params, float32, no dropout."""
  logits_BTV = model.apply({"params": params}, tokens_BT, train=False)
  return token_logprobs(logits_BTV, tokens_BT)


def sample(model, params, prompt_ids, rng, *, group_size, block_size, max_new_tokens,
           temperature, eos_id):
  """prompt_ids: P token lists -> the engine's P * G completions, prompt-major."""
  out = generate_batch(model, params, [list(map(int, p)) for p in prompt_ids], rng,
                       block_size=block_size, max_new_tokens=max_new_tokens,
                       n_samples=group_size, temperature=temperature, eos_id=eos_id)
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
