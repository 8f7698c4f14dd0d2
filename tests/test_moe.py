"""The mixture of experts (models/moe.py): the sparse FFN against dense references, the two
dispatches against each other, the dropped count, the balancing, and the model around it
(cached decoding, scanned layers, training and resuming)."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from llm_jax import decoding
from llm_jax.config import default_config
from llm_jax.models import build_model, moe
from llm_jax.models.layers import ACTIVATIONS, FeedForward
from llm_jax.models.model_config import GATED, ModelConfig
from llm_jax.training.loop import train_and_evaluate

C, V, L = 16, 13, 8  # width, vocabulary, block_size


def moe_cfg(**kw) -> ModelConfig:
  m = default_config().model
  m.update(n_layer=2, n_head=2, n_embd=C, block_size=L, dtype="float32", moe_experts=4,
           moe_top_k=2)
  m.update(kw)
  return ModelConfig.from_config(m, V)


def init(module, x):
  return nn.unbox(jax.jit(lambda x: module.init(jax.random.key(0), x, False))(x)["params"])


def x_of(B=2, T=L, seed=1):
  return jax.random.normal(jax.random.key(seed), (B, T, C))


def expert_ffn(cfg, params, e, x_NC):
  """Expert e's FFN on rows, written out."""
  k = lambda name: params[name]["kernel"][e]
  if cfg.activation in GATED:
    h = ACTIVATIONS[cfg.activation](x_NC @ k("gate")) * (x_NC @ k("up"))
  else:
    h = ACTIVATIONS[cfg.activation](x_NC @ k("fc"))
  return h @ k("proj")


def one_hot_reference(cfg, params, x_BTC):
  """Every expert on every token, combined by a (N, E) matrix of the routing weights (zero for
  the experts a token did not pick): the sparse FFN without any sorting."""
  x_NC = x_BTC.reshape(-1, C)
  logits = x_NC @ params["router"]["kernel"]
  experts, weights, _ = moe.route(cfg, logits, params[moe.BIAS])
  combine_NE = (jax.nn.one_hot(experts, cfg.moe_experts) * weights[..., None]).sum(1)
  y = sum(combine_NE[:, e:e + 1] * expert_ffn(cfg, params, e, x_NC)
          for e in range(cfg.moe_experts))
  return y.reshape(x_BTC.shape)


@pytest.mark.parametrize("activation,dispatch", [("gelu", "ragged"), ("swiglu", "blocks")])
def test_one_expert_top_1_is_the_dense_ffn_with_the_same_weights(activation, dispatch):
  cfg = moe_cfg(moe_experts=1, moe_top_k=1, activation=activation, moe_dispatch=dispatch)
  x = x_of()
  sparse = moe.MoEFeedForward(cfg, 0.02)
  params = init(sparse, x)
  dense = FeedForward(dataclasses.replace(cfg, ffn_hidden=cfg.moe_expert_hidden), 0.02)
  dense_params = {name: {"kernel": p["kernel"][0]} for name, p in params.items()
                  if name not in ("router", moe.BIAS)}
  assert jax.tree.structure(dense_params) == jax.tree.structure(init(dense, x))
  np.testing.assert_allclose(sparse.apply({"params": params}, x, False),
                             dense.apply({"params": dense_params}, x, False), atol=1e-6)


def test_top_k_of_all_experts_is_the_softmax_weighted_sum_of_every_expert():
  cfg = moe_cfg(moe_top_k=4, moe_renormalize=False)
  x = x_of()
  m = moe.MoEFeedForward(cfg, 0.02)
  params = init(m, x)
  x_NC = x.reshape(-1, C)
  probs = jax.nn.softmax(x_NC @ params["router"]["kernel"])
  want = np.zeros((x_NC.shape[0], C), np.float32)
  for e in range(4):  # a plain loop over the experts, each on every token
    want += np.asarray(probs[:, e:e + 1] * expert_ffn(cfg, params, e, x_NC))
  np.testing.assert_allclose(m.apply({"params": params}, x, False).reshape(-1, C), want,
                             atol=1e-6)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_the_dispatches_equal_the_one_hot_reference_in_outputs_and_gradients(router):
  """ragged_dot, dropless blocks and the capacity path with room for every token (factor E/k)
  against the one-hot reference: outputs and gradients to 1e-5 in float32."""
  variants = {"ragged": {}, "blocks": dict(moe_dispatch="blocks"),
              "capacity": dict(moe_dispatch="blocks", moe_capacity_factor=2.0)}
  x = x_of()
  ct = jax.random.normal(jax.random.key(2), x.shape)  # a random cotangent
  base = moe_cfg(moe_router=router, activation="swiglu")
  params = init(moe.MoEFeedForward(base, 0.02), x)
  # a non-zero balancing bias, so that it takes part in the choice
  params[moe.BIAS] = jnp.array([0.02, -0.01, 0.0, 0.01])
  ref = lambda p: (one_hot_reference(base, p, x) * ct).sum()
  want, want_grads = jax.jit(jax.value_and_grad(ref))(params)
  for name, kw in variants.items():
    m = moe.MoEFeedForward(dataclasses.replace(base, **kw), 0.02)
    f = lambda p: (m.apply({"params": p}, x, False) * ct).sum()
    got, grads = jax.jit(jax.value_and_grad(f))(params)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
    _, state = jax.jit(lambda p: m.apply({"params": p}, x, False, mutable=[moe.MOE_STATS]))(
        params)
    assert float(state[moe.MOE_STATS][moe.STATS]["dropped"]) == 0.0
  # the balancing bias gets no gradient
  np.testing.assert_array_equal(want_grads[moe.BIAS], 0.0)


def test_a_small_capacity_drops_exactly_the_tokens_past_it():
  """A routing built to be known: 6 of 8 tokens pick expert 0, 2 pick expert 1 (top-1). Capacity
  factor 1 gives each expert ceil(8 / 2) = 4 rows: expert 0 keeps its first 4 tokens and drops 2
  (their output 0), expert 1 keeps both."""
  cfg = moe_cfg(moe_experts=2, moe_top_k=1, moe_dispatch="blocks", moe_capacity_factor=1.0)
  assert moe.capacity(cfg, 8) == 4
  sign = jnp.array([1, 1, -1, 1, 1, -1, 1, 1], jnp.float32)  # tokens 2 and 5 go to expert 1
  x = x_of(B=1).at[0, :, 0].set(sign * 5.0)
  m = moe.MoEFeedForward(cfg, 0.02)
  params = init(m, x)
  params["router"]["kernel"] = jnp.zeros((C, 2)).at[0].set(jnp.array([1.0, -1.0]))
  y, state = m.apply({"params": params}, x, False, mutable=[moe.MOE_STATS])
  stats = state[moe.MOE_STATS][moe.STATS]
  assert float(stats["dropped"]) == 2 / 8
  np.testing.assert_allclose(stats["load"], [6 / 8, 2 / 8])
  zero = np.all(np.asarray(y[0]) == 0.0, axis=-1)
  # expert 0's tokens in order: 0, 1, 3, 4 kept; 6, 7 dropped
  assert zero.tolist() == [False, False, False, False, False, False, True, True]


def test_the_bias_moves_a_skewed_load_toward_uniform():
  cfg = moe_cfg(moe_experts=4, moe_top_k=1)
  # every token has feature 0 at 1, and the router gives it +0.5 toward expert 0: all tokens
  # pick expert 0 at the start
  x = x_of(B=4).at[..., 0].set(1.0)
  m = moe.MoEFeedForward(cfg, 0.02)
  params = init(m, x)
  params["router"]["kernel"] = params["router"]["kernel"].at[0, 0].add(0.5)
  stats = jax.jit(lambda p: m.apply({"params": p}, x, False, mutable=[moe.MOE_STATS])[1])
  load_max = []
  state = {"params": params}
  for _ in range(60):  # (the scores are probabilities near 1/4: a small rate)
    s = stats(state["params"])[moe.MOE_STATS]
    load_max.append(float(s[moe.STATS]["load"].max() * 4))
    state["params"] = moe.balance(state["params"], s, rate=0.002)
  assert load_max[0] > 3.5, load_max  # skewed at the start
  assert np.mean(load_max[-10:]) < 1.5, load_max
  assert float(state["params"][moe.BIAS][0]) < 0  # the overloaded expert's bias went down


def make_lm(**kw):
  c = default_config().model
  c.update(n_layer=2, n_head=2, n_embd=C, block_size=L, moe_experts=4, moe_top_k=2)
  c.update(kw)
  m = build_model(c, V)
  return m, nn.unbox(jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, L), jnp.int32))["params"])


def test_cached_decoding_equals_the_full_forward():
  m, params = make_lm(moe_shared_experts=1, moe_router="sigmoid", scan_layers=True,
                      activation="swiglu")
  idx = jax.random.randint(jax.random.key(1), (2, L), 0, V)
  full = jax.jit(m.apply)({"params": params}, idx)
  step = jax.jit(lambda cache, piece: m.apply({"params": params, "cache": cache}, piece,
                                              decode=True, mutable=["cache"]))
  cache = decoding.init_cache(m, 2, L)
  outs = []
  for piece in [idx[:, :3]] + [idx[:, t:t + 1] for t in range(3, L)]:
    logits, mutated = step(cache, piece)
    cache = mutated["cache"]
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_scanned_sparse_layers_equal_the_loop_and_sow_stacked_stats():
  loop, params = make_lm()
  scan, scan_params = make_lm(scan_layers=True)
  stacked = {k: v for k, v in params.items() if not k.startswith("h_")}
  stacked["h"] = {"block": jax.tree.map(lambda *ls: jnp.stack(ls), params["h_0"], params["h_1"])}
  assert jax.tree.structure(stacked) == jax.tree.structure(scan_params)
  idx = jax.random.randint(jax.random.key(1), (2, L), 0, V)
  a, sa = jax.jit(lambda p: scan.apply({"params": p}, idx, mutable=[moe.MOE_STATS]))(stacked)
  b, sb = jax.jit(lambda p: loop.apply({"params": p}, idx, mutable=[moe.MOE_STATS]))(params)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  (_, stats_a), = moe.stats_of(sa[moe.MOE_STATS])
  stats_b = [s for _, s in moe.stats_of(sb[moe.MOE_STATS])]
  np.testing.assert_allclose(stats_a["load"], np.stack([s["load"] for s in stats_b]), atol=1e-6)


def test_moe_every_and_first_dense_pick_the_sparse_layers():
  m, params = make_lm(n_layer=4, moe_every=2, moe_first_dense=1)
  assert ["router" in params[f"h_{i}"]["ffn"] for i in range(4)] == [False, True, False, True]
  assert params["h_0"]["ffn"]["fc"]["kernel"].ndim == 2  # the dense FFN's names, unchanged


EP_STEPS = 20


def ep_config(corpus):
  """A GPT with 4 experts that every mesh axis divides, the auxiliary losses and the bias
  balancing on (all must agree across meshes and resumes), rematerialized (the statistics are
  sown from inside the checkpointed Blocks), logging every step."""
  c = tiny_config(corpus, max_steps=EP_STEPS, lr_decay_steps=EP_STEPS, log_interval=1,
                  eval_interval=EP_STEPS, checkpoint_every=EP_STEPS // 2, batch_size=16,
                  moe_aux_loss=0.01, moe_z_loss=0.001, moe_bias_rate=0.01)
  c.model.update(n_head=4, n_embd=32, moe_experts=4, moe_top_k=2, moe_dispatch="blocks",
                 remat="full")
  return c


@pytest.fixture(scope="module")
def ep_corpus(tmp_path_factory):
  from conftest import TOY_TEXT
  path = tmp_path_factory.mktemp("ep") / "toy.txt"
  path.write_text(TOY_TEXT)
  return path


def train_on(corpus, workdir, parallel_="auto", **mesh):
  from test_mesh import train
  return train(ep_config(corpus), workdir, parallel_, **mesh)[0]


@pytest.fixture(scope="module")
def one_device(ep_corpus, tmp_path_factory):
  run = tmp_path_factory.mktemp("one") / "run"
  return run, train_on(ep_corpus, run, "none")


@pytest.fixture(scope="module")
def expert4(ep_corpus, tmp_path_factory):
  run = tmp_path_factory.mktemp("expert4") / "run"
  return run, train_on(ep_corpus, run, data=2, expert=4)


def copy_without_the_last_checkpoint(run, workdir):
  """A finished run's copy that resumes from step EP_STEPS / 2."""
  import shutil
  shutil.copytree(run, workdir)
  shutil.rmtree(workdir / "checkpoints" / str(EP_STEPS))
  return workdir


def test_training_logs_the_router_and_resumes_the_bias_bitwise(ep_corpus, one_device, tmp_path):
  """The MoE's metrics are logged; a run stopped at step 10 and resumed to 20 ends with the
  parameters (the bias, moved by every step, among them) bitwise those of the run straight."""
  from test_training import final_params
  run, losses = one_device
  resumed = copy_without_the_last_checkpoint(run, tmp_path / "resumed")
  train_on(ep_corpus, resumed, "none")
  a, step_a = final_params(run)
  b, step_b = final_params(resumed)
  assert step_a == step_b == EP_STEPS
  assert np.abs(a["h_0"]["ffn"][moe.BIAS]).max() > 0  # the balancing moved it
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if "loss" in r]
  assert len(train) == EP_STEPS and train[-1]["loss"] < train[0]["loss"]
  for key in ("moe_aux_loss", "moe_z_loss", "moe_load_max", "moe_dropped", "moe_entropy",
              "moe_load_max/h_0", "moe_load_max/h_1"):
    assert all(np.isfinite(r[key]) for r in train), key
  assert all(r["moe_load_max"] >= 1.0 and r["moe_dropped"] == 0.0 for r in train)


def test_expert_parallelism_gives_the_losses_of_one_device(ep_corpus, tmp_path, one_device,
                                                           expert4):
  """expert=4 (x data=2) and data=2 x expert=2 x tensor=2 over 20 steps: the losses of one
  device to 1e-5, each device holding its share of the experts."""
  from test_mesh import state_on
  from test_parallel import assert_close
  assert len(one_device[1]) == EP_STEPS
  assert_close(expert4[1], one_device[1])
  mesh = dict(data=2, expert=2, tensor=2)
  assert_close(train_on(ep_corpus, tmp_path / "mesh", **mesh), one_device[1])
  for mesh in (dict(data=2, expert=4), mesh):
    proj = state_on(ep_config(ep_corpus), **mesh).params["h_0"]["ffn"]["proj"]["kernel"]
    assert proj.addressable_shards[0].data.shape[0] == 4 // mesh["expert"]


def test_a_run_saved_on_expert_4_resumes_on_expert_2(ep_corpus, tmp_path, one_device, expert4):
  from test_parallel import assert_close
  resumed = copy_without_the_last_checkpoint(expert4[0], tmp_path / "run")
  assert_close(train_on(ep_corpus, resumed, data=4, expert=2), one_device[1])


def test_an_moe_run_evaluates_and_fine_tunes(ep_corpus, one_device, tmp_path):
  """A run initialized from the MoE run (train.init_from) evaluates at step 0 exactly as its
  source did at its last step, experts, router and balancing bias included, then trains on;
  `llm-jax evaluate` reads the MoE run too."""
  from llm_jax.evaluate import evaluate_run
  run, _ = one_device
  source = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  source_val = [r["val_loss"] for r in source if "val_loss" in r][-1]
  c = ep_config(ep_corpus)
  c.parallel = "none"
  c.train.update(init_from=str(run), max_steps=4, lr_decay_steps=4, eval_interval=4,
                 checkpoint_every=4)
  train_and_evaluate(c, str(tmp_path / "tuned"))
  tuned = [json.loads(line) for line in (tmp_path / "tuned" / "metrics.jsonl").read_text()
           .splitlines()]
  vals = [r for r in tuned if "val_loss" in r]
  assert vals[0]["step"] == 0 and vals[0]["val_loss"] == pytest.approx(source_val, abs=1e-6)
  assert vals[-1]["step"] == 4 and np.isfinite(vals[-1]["val_loss"])
  assert all(np.isfinite(r["moe_load_max"]) for r in tuned if "loss" in r)
  r = evaluate_run(run)
  assert r["step"] == EP_STEPS and 0 < r["loss"] < np.log(c.model.vocab_size or 64)


def test_active_parameters_count_k_experts_of_each_sparse_layer():
  from llm_jax.models import active_params
  from llm_jax.models.flops import count_params
  count = lambda **kw: count_params(make_lm(**kw)[1])[0]
  m = default_config().model
  m.update(n_layer=2, n_head=2, n_embd=C, block_size=L, moe_experts=4, moe_top_k=2)
  # 4 experts top-2 use what 2 experts top-2 hold, but for the router's and bias's 2 more columns
  assert active_params(m, count()) == count(moe_experts=2) + 2 * (C * 2 + 2)


@pytest.mark.parametrize("fields,match", [
    ({"model.moe_experts": 4, "model.moe_top_k": 5}, r"config.model.moe_top_k=5 is invalid: use 1 "
                                                      r"to model.moe_experts=4"),
    ({"model.moe_experts": 6, "mesh.expert": 4}, r"config.mesh.expert=4 is invalid: it must "
                                                  r"divide model.moe_experts=6"),
    ({"model.moe_experts": 4, "model.name": "bigram"}, r"config.model.moe_experts=4 is invalid: "
                                                        r"the bigram is a table of logits"),
    ({"model.moe_experts": 4, "model.moe_capacity_factor": 1.25},
     r"config.model.moe_dispatch='ragged' is invalid: a capacity"),
    ({"model.moe_experts": 4, "model.scan_layers": True, "model.moe_every": 2},
     r"config.model.scan_layers=True is invalid: scanned layers are all alike"),
    ({"train.moe_aux_loss": 0.01}, r"config.train.moe_aux_loss=0.01 is invalid: it weighs a "
                                   r"mixture of experts"),
    ({"model.moe_experts": 4, "model.moe_router": "topk"}, r"moe_router='topk' is invalid"),
])
def test_bad_moe_settings_are_one_line(fields, match):
  from llm_jax.config import validate
  from llm_jax.errors import UserError
  c = default_config()
  for key, value in fields.items():
    section, name = key.split(".")
    c[section][name] = value
  with pytest.raises(UserError, match=match) as e:
    validate(c)
  assert "\n" not in str(e.value)


def test_vectorized_runs_take_the_blocks_dispatch_and_refuse_ragged():
  """ragged_dot's gradient does not vmap in JAX 0.10.2: a vectorized sweep of an MoE is refused
  with 'ragged' and accepted with 'blocks', whose gradients under vmap are the unbatched ones."""
  from llm_jax.errors import UserError
  from llm_jax.training import vectorized
  configs = []
  for seed in (0, 1):
    c = default_config()
    c.seed = seed
    c.model.update(moe_experts=4, moe_top_k=2)
    configs.append(c)
  with pytest.raises(UserError, match="moe_dispatch='ragged' cannot be vectorized"):
    vectorized.check_vectorizable(configs)
  for c in configs:
    c.model.moe_dispatch = "blocks"
  vectorized.check_vectorizable(configs)
  # the blocks dispatch's gradient under vmap equals the unbatched one
  cfg = moe_cfg(moe_dispatch="blocks")
  m = moe.MoEFeedForward(cfg, 0.02)
  xs = jnp.stack([x_of(B=1, T=4, seed=1), x_of(B=1, T=4, seed=2)])
  params = jax.jit(jax.vmap(lambda x: init(m, x)))(xs)
  grad = lambda p, x: jax.grad(lambda p: (m.apply({"params": p}, x, False) ** 2).sum())(p)
  batched = jax.jit(jax.vmap(grad))(params, xs)
  one = jax.jit(grad)(jax.tree.map(lambda a: a[1], params), xs[1])
  for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(one)):
    np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6)


def test_both_stacks_of_the_transformer_take_the_experts():
  c = default_config().model
  c.update(name="transformer", n_layer=2, n_head=2, n_embd=C, block_size=L, moe_experts=4,
           moe_top_k=1, moe_first_dense=1)
  m = build_model(c, V, pad_id=0)
  src = jax.random.randint(jax.random.key(1), (2, L), 1, V)
  params = nn.unbox(m.init(jax.random.key(0), src, src)["params"])
  for stack in ("encoder", "decoder"):
    assert "router" not in params[stack]["layer_0"]["ffn"]
    assert params[stack]["layer_1"]["ffn"]["proj"]["kernel"].shape[0] == 4
  _, state = m.apply({"params": params}, src, src, mutable=[moe.MOE_STATS])
  assert [p for p, _ in moe.stats_of(state[moe.MOE_STATS])] == ["decoder/layer_1",
                                                                 "encoder/layer_1"]
