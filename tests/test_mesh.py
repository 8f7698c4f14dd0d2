"""Training on a device mesh (training/sharding.py, parallel.MeshPlacement) on the 8 simulated CPU
devices of conftest: every mesh computes the losses of one device, FSDP holds 1/8 of each matrix
per device, and a checkpoint written on one mesh resumes on another."""

import jax
import numpy as np
import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.errors import UserError
from llm_jax.training.tasks import build_task
from llm_jax.training import parallel, sharding
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.optimizer import make_optimizer
from llm_jax.training.steps import init_state
from test_parallel import assert_close, read_metrics
from test_seq2seq import s2s_config

STEPS = 60
MESHES = {"fsdp8": {"data": 1, "fsdp": 8},
          "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
          "tensor4_data2": {"data": 2, "tensor": 4}}


def gpt_config(corpus, **train):
  # heads, width and hidden units that every mesh axis divides; dropout on, whose masks a mesh
  # must draw as one device does
  c = tiny_config(corpus, **{"max_steps": STEPS, "lr_decay_steps": STEPS, "log_interval": 1,
                             "eval_interval": STEPS // 2, "checkpoint_every": STEPS // 2,
                             "batch_size": 16, **train})
  c.model.update(n_head=4, n_embd=32, dropout=0.1)
  return c


def transformer_config(**train):
  c = s2s_config("reverse")
  c.model.update(n_head=4, n_embd=32, dropout=0.1)
  c.train.update({"batch_size": 16, "max_steps": STEPS, "lr_decay_steps": STEPS,
                  "warmup_steps": 2, "log_interval": 1, "eval_interval": STEPS // 2,
                  "eval_iters": 2, "checkpoint_every": STEPS // 2, "sample_tokens": 0, **train})
  return c


def train(c, workdir, parallel_="auto", **mesh):
  c = c.copy_and_resolve_references()
  c.parallel = parallel_
  c.mesh.update(mesh)
  train_and_evaluate(c, str(workdir))
  return read_metrics(workdir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("mesh") / "toy.txt"
  path.write_text(TOY_TEXT)
  return path


@pytest.mark.parametrize("family", ["gpt", "transformer"])
def test_every_mesh_gives_the_losses_of_one_device(family, corpus, tmp_path):
  assert jax.device_count() == 8
  c = gpt_config(corpus) if family == "gpt" else transformer_config()
  c.train.checkpoint_every = STEPS  # (the resume tests below save mid-run)
  one_train, one_eval = train(c, tmp_path / "one", "none")
  assert len(one_train) == STEPS and one_train[STEPS] < one_train[1] - 0.5  # it learned
  # the GPT on the meshes of FSDP and of tensor parallelism (data=8 alone: the resume test below
  # ends there), the transformer's own rules (cross-attention, the two stacks) on the meshes that
  # use every axis
  names = list(MESHES) if family == "gpt" else ["data2_fsdp2_tensor2", "tensor4_data2"]
  for name in names:
    mesh = MESHES[name]
    mesh_train, mesh_eval = train(c, tmp_path / name, **mesh)
    assert_close(mesh_train, one_train)
    assert_close(mesh_eval, one_eval)


def state_on(c, **mesh):
  c = c.copy_and_resolve_references()
  c.parallel = "auto"
  c.mesh.update(mesh)
  task = build_task(c, None)
  tx = make_optimizer(c.train)
  place = parallel.placement(c, task.model, tx)
  return place.create_state(lambda: init_state(task.model, c.model, tx, jax.random.key(0)))


def test_fsdp_holds_an_eighth_of_every_matrix_per_device(corpus):
  c = gpt_config(corpus)
  c.model.update(n_embd=64, n_layer=2)
  state = state_on(c, data=1, fsdp=8)
  matrices = {jax.tree_util.keystr(k): x for k, x in
              jax.tree_util.tree_leaves_with_path(state.params) if x.ndim >= 2}
  assert len(matrices) >= 9  # embedding, position table, 2 x (qkv, out, fc, proj)
  for name, x in matrices.items():
    for shard in x.addressable_shards:
      assert shard.data.size * 8 == x.size, name
  for x in jax.tree.leaves(state.opt_state):  # the Adam moments as their parameters
    if x.ndim >= 2:
      assert x.addressable_shards[0].data.size * 8 == x.size
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  assert sharding.per_device_bytes(state) <= whole / 6


def test_tensor_parallelism_splits_heads_and_hidden_units(corpus):
  c = gpt_config(corpus)
  state = state_on(c, data=2, tensor=4)
  layer = state.params["h_0"]
  qkv = layer["attn"]["qkv"]["kernel"]  # (C, 3, H, D): split over H
  assert qkv.addressable_shards[0].data.shape == (32, 3, 1, 8)
  assert layer["attn"]["out"]["kernel"].addressable_shards[0].data.shape == (1, 8, 32)
  assert layer["ffn"]["fc"]["kernel"].addressable_shards[0].data.shape == (32, 32)  # F=128 / 4
  assert layer["ffn"]["proj"]["kernel"].addressable_shards[0].data.shape == (32, 32)


@pytest.fixture(scope="module")
def fsdp4_reference(corpus, tmp_path_factory):
  return train(gpt_config(corpus), tmp_path_factory.mktemp("fsdp4"), data=2, fsdp=4)[0]


@pytest.mark.parametrize("then", [{"data": 8}, "one device"])
def test_a_run_saved_on_one_mesh_resumes_on_another(corpus, tmp_path, then, fsdp4_reference):
  c = gpt_config(corpus)
  half = c.copy_and_resolve_references()
  half.train.max_steps = STEPS // 2
  train(half, tmp_path / "run", data=2, fsdp=4)
  resumed, _ = (train(c, tmp_path / "run", "none") if then == "one device" else
                train(c, tmp_path / "run", **then))
  assert_close(resumed, fsdp4_reference)


@pytest.mark.parametrize("mesh,match", [
    ({"data": 3}, "config.mesh.data=3, config.mesh.fsdp=1, config.mesh.expert=1, config.mesh.tensor=1: "
                   "the product is 3"),
    ({"data": -1, "fsdp": -1}, "-1 on at most one axis"),
    ({"fsdp": 3}, "the 8 devices do not divide by 3"),
])
def test_a_mesh_that_does_not_fit_the_devices_is_one_line(corpus, tmp_path, mesh, match):
  with pytest.raises(UserError, match=match):
    train(gpt_config(corpus), tmp_path / "run", **mesh)


def test_a_batch_the_mesh_does_not_split_and_a_mesh_without_auto_are_refused(corpus, tmp_path):
  with pytest.raises(UserError, match=r"batch_size=12 does not divide by the 8 devices"):
    train(gpt_config(corpus, batch_size=12), tmp_path / "run", data=2, fsdp=4)
  with pytest.raises(UserError, match=r"--config.mesh.fsdp=8 .* needs the mesh"):
    train(gpt_config(corpus), tmp_path / "run", "pmap", data=1, fsdp=8)


def test_the_rules_replicate_what_the_mesh_does_not_divide():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert sharding.spec_for(("vocab", "embed"), (65, 32), mesh) == jax.sharding.PartitionSpec(
      None, "fsdp")
  assert sharding.spec_for(("embed", "vocab"), (32, 64), mesh) == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  assert sharding.spec_for(("batch", None), (16, 5), mesh) == jax.sharding.PartitionSpec(
      ("data", "fsdp"), None)
  np.testing.assert_equal(sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8),
                          {"data": 4, "fsdp": 2, "expert": 1, "tensor": 1})
