"""GRPO's pure pieces (llm_jax/rl/losses.py): the group advantages' properties, and the loss and
its gradient against a numpy reference (float64, gradients by central differences) for each
switch: loss_norm, the (asymmetric) clipping, KL on and off, token and sequence importance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.rl import losses


def test_advantages_zero_mean_unit_std_and_equal_groups():
  rewards = jnp.array([1., 0., 0., 1.,   2., 2., 2., 2.,   0., 1., 3., 0.5])
  adv, w = losses.group_advantages(rewards, 4, std_normalize=True)
  a = np.asarray(adv).reshape(3, 4)
  np.testing.assert_allclose(a.mean(1), 0, atol=1e-6)
  np.testing.assert_allclose(a[[0, 2]].std(1), 1, atol=1e-5)
  np.testing.assert_array_equal(a[1], 0)  # an all-equal group: no signal
  np.testing.assert_array_equal(w, 1)
  adv_dr, _ = losses.group_advantages(rewards, 4, std_normalize=False)  # Dr. GRPO: only centred
  r = np.asarray(rewards).reshape(3, 4)
  np.testing.assert_allclose(np.asarray(adv_dr).reshape(3, 4), r - r.mean(1, keepdims=True),
                             atol=1e-6)
  _, w_skip = losses.group_advantages(rewards, 4, skip_equal_groups=True)
  np.testing.assert_array_equal(np.asarray(w_skip).reshape(3, 4).min(1), [1, 0, 1])


def _np_loss(logits, tokens, old, ref, adv, mask, weight, clip_low, clip_high, kl_coef, norm, imp):
  """The loss in float64 numpy, written from the formulas (not from losses.py's code)."""
  z = logits - logits.max(-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
  nxt = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], 1)
  x = np.take_along_axis(logp_all, nxt[..., None], -1)[..., 0]
  B, T = x.shape
  per_row, tok_sum, tok_n = [], 0.0, 0.0
  for i in range(B):
    if weight[i] == 0:
      continue
    idx = np.nonzero(mask[i])[0]
    if imp == "sequence":
      rho = np.full(len(idx), np.exp(np.mean(x[i, idx] - old[i, idx])))
    else:
      rho = np.exp(x[i, idx] - old[i, idx])
    pg = -np.minimum(rho * adv[i], np.clip(rho, 1 - clip_low, 1 + clip_high) * adv[i])
    d = ref[i, idx] - x[i, idx]
    l = pg + kl_coef * (np.exp(d) - d - 1)
    per_row.append(l.mean())
    tok_sum += l.sum()
    tok_n += len(idx)
  return np.mean(per_row) if norm == "sequence" else tok_sum / tok_n


@pytest.mark.parametrize("norm,imp,clip,kl", [
    ("sequence", "token", (0.2, 0.2), 0.0),
    ("token", "token", (0.2, 0.2), 0.0),
    ("sequence", "token", (0.1, 0.3), 0.0),    # DAPO's clip-higher
    ("token", "token", (0.2, 0.28), 0.05),     # KL on
    ("sequence", "sequence", (0.05, 0.05), 0.0),  # GSPO
    ("token", "sequence", (0.05, 0.1), 0.1),
])
def test_loss_and_gradient_match_numpy(norm, imp, clip, kl):
  rng = np.random.default_rng(0)
  B, T, V = 6, 7, 5
  logits = rng.normal(size=(B, T, V))
  tokens = rng.integers(0, V, size=(B, T))
  z = logits - logits.max(-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
  nxt = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], 1)
  x0 = np.take_along_axis(logp_all, nxt[..., None], -1)[..., 0]
  # old log-probs away from the current ones by up to +-0.5 in log-ratio: some tokens clipped
  old = x0 + rng.uniform(-0.5, 0.5, size=(B, T))
  ref = x0 + rng.uniform(-0.3, 0.3, size=(B, T))
  mask = np.zeros((B, T))
  for i, (start, n) in enumerate([(1, 5), (2, 3), (0, 6), (3, 2), (1, 1), (2, 4)]):
    mask[i, start:start + n] = 1
  adv = rng.normal(size=B)
  weight = np.array([1, 1, 1, 0, 1, 1.0])  # row 3: a skipped group's
  kw = dict(clip_low=clip[0], clip_high=clip[1], kl_coef=kl, loss_norm=norm, importance=imp)

  def jax_loss(lg):
    x = losses.token_logprobs(lg, jnp.asarray(tokens))
    return losses.grpo_loss(x, jnp.float32(old), jnp.float32(ref), jnp.float32(adv),
                            jnp.float32(mask), jnp.float32(weight), **kw)[0]

  loss, grad = jax.value_and_grad(jax_loss)(jnp.float32(logits))
  ref_fn = lambda lg: _np_loss(lg, tokens, old, ref, adv, mask, weight, clip[0], clip[1], kl,
                               norm, imp)
  np.testing.assert_allclose(float(loss), ref_fn(logits), rtol=1e-5, atol=1e-6)
  eps, num = 1e-6, np.zeros_like(logits)
  for idx in np.ndindex(logits.shape):
    up, down = logits.copy(), logits.copy()
    up[idx] += eps
    down[idx] -= eps
    num[idx] = (ref_fn(up) - ref_fn(down)) / (2 * eps)
  assert np.abs(num).max() > 1e-3  # the gradient is not trivially zero
  np.testing.assert_allclose(np.asarray(grad), num, atol=2e-6)
  assert not np.asarray(grad)[3].any()  # the skipped row contributes nothing


def test_clip_fraction_and_mismatch_metrics():
  old = jnp.zeros((2, 3))
  new = jnp.log(jnp.array([[1.0, 1.5, 0.5], [1.0, 1.0, 1.0]]))
  mask = jnp.ones((2, 3))
  _, m = losses.grpo_loss(new, old, old, jnp.array([1.0, -1.0]), mask, jnp.ones(2),
                          clip_low=0.2, clip_high=0.2)
  # row 0 (A > 0): the 1.5 ratio is clipped, the 0.5 one is not (min keeps it); row 1: none
  np.testing.assert_allclose(float(m["clip_fraction"]), 1 / 6, atol=1e-6)
  np.testing.assert_allclose(float(m["ratio_mismatch"]), 0.5, atol=1e-6)


def test_arithmetic_task_is_seeded_and_its_reward_exact():
  from llm_jax.rl import tasks
  task = tasks.get_task("arithmetic", 0)
  a, b = (task.prompts(np.random.default_rng([0, 2, 5]), 50) for _ in range(2))
  assert a == b  # a function of the generator's seed alone
  for p in a:
    x, y = (int(w) for w in p.text.split() if w.isdigit())
    assert int(p.answer) == (x + y if "gets" in p.text else x - y) >= 0
    assert task.reward(p, p.answer) == 1.0 and task.reward(p, f" {p.answer} ") == 1.0
    assert task.reward(p, p.answer + "0") == 0.0
    assert set(p.text + task.demonstration(p)) <= set(task.alphabet)


def test_speaker_task_is_checked_against_the_plays():
  """The right answer of a 'who says it' prompt is a speaker whose speech holds the line."""
  from llm_jax.data.plays import load_plays_text
  from llm_jax.rl import tasks
  task = tasks.get_task("speaker", 0)
  speeches = [s.split("\n") for s in load_plays_text().split("\n\n")]
  for p in task.prompts(np.random.default_rng(1), 5):
    line = p.text.split("\nWho says it? ")[0]
    for who in p.answer:
      assert any(s[0] == f"{who}:" and line in s[1:] for s in speeches), (who, line)
    assert task.reward(p, p.answer[0]) == 1.0 and task.reward(p, "NOBODY") == 0.0


def test_unknown_task_and_a_raising_reward_are_one_line():
  from llm_jax.errors import UserError
  from llm_jax.rl import tasks
  with pytest.raises(UserError, match=r"^config.rl.task='nope' is not a task: use one of"):
    tasks.get_task("nope", 0)
  broken = tasks.Task("broken", None, lambda p, t: 1 / 0, lambda p: None, "")
  with pytest.raises(UserError) as e:
    tasks.score(broken, tasks.Prompt("2+2=", "4"), "5")
  assert str(e.value).startswith("rl task 'broken': the reward function raised "
                                 "ZeroDivisionError") and "'2+2='" in str(e.value)
