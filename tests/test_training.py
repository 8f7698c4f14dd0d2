import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from llm_jax.config import default_config
from llm_jax.errors import UserError
from llm_jax.models import build_model
from llm_jax.training import checkpoint
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.optimizer import lr_schedule, make_optimizer
from llm_jax.training.steps import create_state, make_train_step


def final_params(workdir):
  from test_faults import saved_state
  manager = checkpoint.make_manager(str(workdir), 100, create=False)
  params = saved_state(manager, manager.latest_step())["params"]
  manager.close()
  return params, manager.latest_step()


def test_loss_falls_on_a_learnable_text(toy_corpus, tmp_path):
  c = tiny_config(toy_corpus, max_steps=80, lr_decay_steps=80, eval_interval=80, learning_rate=1e-2)
  s = train_and_evaluate(c, str(tmp_path / "run"))
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  first_val = json.loads(lines[0])["val_loss"]
  assert s["val_loss"] < 0.4 * first_val, (first_val, s["val_loss"])


def test_bigram_learns_a_deterministic_bigram_text(tmp_path):
  # each character determines the next: a bigram model can reach (near) zero loss
  path = tmp_path / "cycle.txt"
  path.write_text("abcdefgh" * 500)
  c = tiny_config(path, max_steps=150, lr_decay_steps=150, learning_rate=0.3, min_lr=0.03,
                  weight_decay=0.0, eval_interval=150)
  c.model.name = "bigram"
  s = train_and_evaluate(c, str(tmp_path / "run"))
  assert s["val_loss"] < 0.05


def test_resume_gives_the_same_parameters_bitwise(toy_corpus, tmp_path):
  """N steps straight == N/2 steps, stop, then resume to N (dropout on, so its keys must match)."""
  c = tiny_config(toy_corpus, max_steps=12, lr_decay_steps=12, checkpoint_every=6,
                  eval_interval=6)
  c.model.dropout = 0.1
  train_and_evaluate(c, str(tmp_path / "straight"))
  half = tiny_config(toy_corpus, max_steps=6, lr_decay_steps=12, checkpoint_every=6,
                     eval_interval=6)
  half.model.dropout = 0.1
  train_and_evaluate(half, str(tmp_path / "resumed"))
  s = train_and_evaluate(c, str(tmp_path / "resumed"))
  assert s["step"] == 12
  a, step_a = final_params(tmp_path / "straight")
  b, step_b = final_params(tmp_path / "resumed")
  assert step_a == step_b == 12
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # the metrics log holds each step once
  records = map(json.loads, (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines())
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == sorted(set(steps))


def test_gradient_accumulation_equals_the_big_batch():
  c = default_config()
  c.model.update(n_layer=1, n_head=2, n_embd=16, block_size=8)
  m = build_model(c.model, 11)
  tx = make_optimizer(c.train)
  params = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  state = create_state(params, tx)
  step = jax.jit(make_train_step(make_loss_fn(m), tx))
  x = jax.random.randint(jax.random.key(1), (8, 8), 0, 11)
  y = jax.random.randint(jax.random.key(2), (8, 8), 0, 11)
  big, mb = step(state, {"inputs": x[None], "targets": y[None]}, jax.random.key(3))
  acc, ma = step(state, {"inputs": x.reshape(4, 2, 8), "targets": y.reshape(4, 2, 8)},
                 jax.random.key(3))
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)
  for p, q in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params)):
    np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)


def test_schedule_is_nanogpts():
  c = default_config().train  # lr 1e-3, min 1e-4, warmup 100, decay 2000
  s = lr_schedule(c)
  np.testing.assert_allclose(s(0), 1e-3 * 1 / 101, rtol=1e-6)
  np.testing.assert_allclose(s(99), 1e-3 * 100 / 101, rtol=1e-6)
  np.testing.assert_allclose(s(100), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(s(1050), 1e-4 + 0.5 * (1e-3 - 1e-4), rtol=1e-5)
  np.testing.assert_allclose(s(2000), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(s(5000), 1e-4, rtol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_weight_decay_on_matrices_and_embeddings_only(scan_layers):
  """nanoGPT's rule: every matrix and embedding table decays; biases (even the fused QKV bias of
  shape (3, H, D)) and LayerNorm scales do not, stacked on a layer axis or not."""
  c = default_config()
  c.model.update(n_layer=2, n_head=2, n_embd=16, block_size=8, use_bias=True,
                 scan_layers=scan_layers)
  c.train.update(learning_rate=1e-2, weight_decay=0.5, warmup_steps=0, grad_clip=0.0)
  m = build_model(c.model, 11)
  params = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  params = jax.tree.map(lambda x: x + 0.5, params)  # nothing zero: decay would move anything
  tx = make_optimizer(c.train)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # with zero gradients only the decay moves a parameter
  seen = set()
  for path, u in jax.tree_util.tree_leaves_with_path(updates):
    p = params
    for k in path:
      p = p[k.key]
    layer_axis = int(scan_layers and path[0].key == "h")  # stacked blocks: (n_layer, ...)
    name = path[-1].key
    assert bool(jnp.any(u != 0)) == (name in ("kernel", "embedding", "table")), path
    assert name in ("bias", "scale") or p.ndim - layer_axis >= 2, path
    seen.add(name)
  assert seen == {"kernel", "embedding", "table", "bias", "scale"}  # every kind was there


def test_a_checkpoint_of_the_standard_handler_restores_whole_and_its_params_alone(tmp_path):
  """Checkpoints written before the state's handler became the PyTree one (by Orbax's
  StandardCheckpointHandler, which wraps it) restore as they did, and their step and parameters
  read alone, without the optimizer's state."""
  c = default_config()
  c.model.update(n_layer=1, n_head=2, n_embd=16, block_size=8)
  m = build_model(c.model, 11)
  shapes = nn.unbox(jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  rng = np.random.default_rng(0)  # any values: nothing to compile
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes)
  state = jax.device_get(create_state(params, make_optimizer(c.train)).replace(step=jnp.int32(7)))
  old = ocp.CheckpointManager(str(tmp_path / "checkpoints"), item_handlers={
      "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  old.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave({"best_val_loss": 1.5})))
  old.wait_until_finished()
  old.close()
  manager = checkpoint.make_manager(tmp_path, 2, create=False)
  zeros = lambda tree: jax.tree.map(np.zeros_like, tree)
  whole, meta = checkpoint.restore(manager, zeros(state))
  assert meta == {"best_val_loss": 1.5}
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  alone, _ = checkpoint.restore(manager, {"step": np.zeros((), np.int32), "params": zeros(params)})
  assert set(alone) == {"step", "params"} and int(alone["step"]) == 7
  for a, b in zip(jax.tree.leaves(alone["params"]), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  other = {"step": np.zeros((), np.int32),
           "params": {**zeros(params), "wte": {"embedding": np.zeros((12, 16), np.float32)}}}
  with pytest.raises(UserError, match=r"holds another model \(params.wte.embedding is \(11, 16\)"):
    checkpoint.restore(manager, other)
  manager.close()
