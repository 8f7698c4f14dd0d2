"""Group advantages and the GRPO loss, pure functions of arrays (the update step jits them).

A batch holds P prompts x G samples ("a group" is one prompt's G samples), flattened prompt-major
to B = P * G rows. Each row is prompt + completion, left-aligned and right-padded to T tokens;
`mask_BT` is 1 at the positions whose *next* token is a sampled completion token (so position t
scores token t + 1), 0 elsewhere (the prompt, the padding).

Advantages (`group_advantages`): r - mean(r of its group), divided by the group's std when
std_normalize (GRPO, Shao et al. 2024, DeepSeekMath), not divided (Dr. GRPO, Liu et al. 2025,
"Understanding R1-Zero-Like Training": the std favours easy and hard prompts). A group whose
rewards are all equal carries no signal: its advantages are exactly 0, and with skip_equal_groups
(DAPO's dynamic sampling, Yu et al. 2025) its rows get weight 0, so they do not dilute the loss's
normalization either. DAPO draws more prompts to refill such a batch; here the batch stays smaller.

The loss (`grpo_loss`), per completion token t of row i, with x = log pi(token), x_old the
sampler's log-prob, x_ref the frozen reference's, A_i the row's advantage:
    importance='token' (GRPO/PPO):   rho_t = exp(x_t - x_old_t)
    importance='sequence' (GSPO, Zheng et al. 2025): rho_t = s_i = exp(mean over row i of (x - x_old))
    pg_t = -min(rho_t A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) A_i)
      (clip_low = clip_high: PPO's symmetric range; DAPO's "clip-higher" raises clip_high)
    kl_t = exp(x_ref - x) - (x_ref - x) - 1   (the k3 estimator of KL(pi || ref), Schulman 2020;
      nonnegative, unbiased), weighted by kl_coef (0: no reference is read at all)
    l_t = pg_t + kl_coef kl_t
and the batch's loss:
    loss_norm='sequence' (GRPO): the mean over rows of each row's mean over its tokens
    loss_norm='token' (DAPO, Dr. GRPO): the sum over all tokens / the number of tokens, so a long
      completion is not down-weighted per token
Rows of weight 0 (skipped groups) count in neither.
"""

import jax
import jax.numpy as jnp

LOSS_NORMS = ("sequence", "token")
IMPORTANCES = ("token", "sequence")
# the std of an all-equal group is 0: it divides (r - mean) = 0 by this instead
STD_EPS = 1e-6


def group_advantages(rewards_B, group_size: int, std_normalize: bool = True,
                     skip_equal_groups: bool = False):
  """(B,) rewards, prompt-major groups of group_size -> ((B,) advantages, (B,) row weights).
  A group's rewards all equal -> advantages 0 (and weight 0 with skip_equal_groups)."""
  r_PG = rewards_B.reshape(-1, group_size).astype(jnp.float32)
  centred_PG = r_PG - r_PG.mean(axis=1, keepdims=True)
  equal_P1 = jnp.all(r_PG == r_PG[:, :1], axis=1, keepdims=True)
  if std_normalize:
    std_P1 = r_PG.std(axis=1, keepdims=True)
    centred_PG = centred_PG / jnp.maximum(std_P1, STD_EPS)
  adv_PG = jnp.where(equal_P1, 0.0, centred_PG)
  weight_PG = jnp.where(equal_P1 & skip_equal_groups, 0.0, 1.0) * jnp.ones_like(r_PG)
  return adv_PG.reshape(-1), weight_PG.reshape(-1)


def token_logprobs(logits_BTV, tokens_BT):
  """log_softmax(logits) at each position's next token: (B, T) float32, position t scoring token
  t + 1 (the last position scores nothing: 0)."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  next_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros_like(tokens_BT[:, :1])], axis=1)
  return jnp.take_along_axis(logp_BTV, next_BT[..., None], axis=-1)[..., 0]


def entropy(logits_BTV):
  """(B, T) entropy of each position's distribution, float32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -(jnp.exp(logp_BTV) * logp_BTV).sum(-1)


def grpo_loss(logp_BT, old_logp_BT, ref_logp_BT, adv_B, mask_BT, weight_B, *, clip_low: float,
              clip_high: float, kl_coef: float = 0.0, loss_norm: str = "sequence",
              importance: str = "token"):
  """The loss (module docstring) and its metrics: {'clip_fraction', 'kl', 'ratio_mismatch'}
  (largest |rho - 1| over the completion tokens; the ratio of the old log-probs, rho, not s)."""
  m_BT = mask_BT.astype(jnp.float32) * weight_B[:, None]
  n_B = jnp.maximum(m_BT.sum(1), 1.0)
  log_ratio_BT = logp_BT - old_logp_BT
  if importance == "sequence":
    seq_log_ratio_B = (log_ratio_BT * m_BT).sum(1) / n_B
    rho_BT = jnp.broadcast_to(jnp.exp(seq_log_ratio_B)[:, None], logp_BT.shape)
  else:
    rho_BT = jnp.exp(log_ratio_BT)
  a_B1 = adv_B[:, None]
  unclipped_BT = rho_BT * a_B1
  clipped_BT = jnp.clip(rho_BT, 1.0 - clip_low, 1.0 + clip_high) * a_B1
  pg_BT = -jnp.minimum(unclipped_BT, clipped_BT)
  loss_BT = pg_BT
  if kl_coef:
    d_BT = ref_logp_BT - logp_BT
    kl_BT = jnp.exp(d_BT) - d_BT - 1.0
    loss_BT = loss_BT + kl_coef * kl_BT
  else:
    kl_BT = jnp.zeros_like(logp_BT)
  if loss_norm == "sequence":
    rows_B = (weight_B > 0).astype(jnp.float32)
    loss = ((loss_BT * m_BT).sum(1) / n_B * rows_B).sum() / jnp.maximum(rows_B.sum(), 1.0)
  else:
    loss = (loss_BT * m_BT).sum() / jnp.maximum(m_BT.sum(), 1.0)
  n_tokens = jnp.maximum(m_BT.sum(), 1.0)
  is_clipped_BT = clipped_BT < unclipped_BT  # the clip binds: this token's gradient is 0
  mask_any_BT = mask_BT.astype(jnp.float32)
  metrics = {
      "clip_fraction": (is_clipped_BT * m_BT).sum() / n_tokens,
      "kl": (kl_BT * m_BT).sum() / n_tokens,
      "ratio_mismatch": jnp.max(jnp.abs(jnp.exp(log_ratio_BT) - 1.0) * mask_any_BT),
  }
  return loss, metrics
