"""train.optimizer, train.schedule and model.remat (training/optimizer.py, models/layers.py): each
optimizer learns and resumes bitwise, Muon on a mesh gives the losses of one device and its
orthogonalization is a Newton-Schulz written in numpy, the schedules' values at their corners,
a run shorter than its warmup runs, and activation checkpointing changes the memory, not the
losses."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.config import default_config, validate
from llm_jax.errors import UserError
from llm_jax.fileio import load_python_file
from llm_jax.models import build_model, init_params
from llm_jax.training import sharding
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import OPTIMIZERS, lr_schedule, make_optimizer, muon_labels
from llm_jax.training.steps import init_state, make_train_step
from test_parallel import assert_close, read_metrics
from test_training import final_params

BABY = pathlib.Path(__file__).parent.parent / "configs" / "gpt_char_baby.py"
STEPS = 16
# a peak rate each learns the toy text at in STEPS steps (Lion's sign updates want a smaller one)
RATES = {"adamw": 1e-2, "lion": 2e-3, "adafactor": 1e-2, "muon": 1e-2, "sgd": 0.5}


def opt_config(corpus, optimizer, max_steps=STEPS):
  return tiny_config(corpus, optimizer=optimizer, learning_rate=RATES[optimizer],
                     min_lr=RATES[optimizer] / 10, max_steps=max_steps, lr_decay_steps=STEPS,
                     checkpoint_every=STEPS // 2, eval_interval=STEPS // 2, log_interval=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("optimizer") / "toy.txt"
  path.write_text(TOY_TEXT)
  return path


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
  """{optimizer: the workdir of its STEPS uninterrupted steps on one device}."""
  runs = {}
  for name in OPTIMIZERS:
    runs[name] = tmp_path_factory.mktemp(f"straight_{name}")
    train_and_evaluate(opt_config(corpus, name), str(runs[name]))
  return runs


@pytest.mark.floors
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_learns_and_resumes_bitwise(name, corpus, straight, tmp_path):
  losses, _ = read_metrics(straight[name])
  assert losses[STEPS] < losses[1] - 0.5, losses  # it learned
  half = opt_config(corpus, name, max_steps=STEPS // 2)
  train_and_evaluate(half, str(tmp_path))
  train_and_evaluate(opt_config(corpus, name), str(tmp_path))
  a, step_a = final_params(straight[name])
  b, step_b = final_params(tmp_path)
  assert step_a == step_b == STEPS
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.floors
def test_muon_on_a_mesh_gives_the_losses_of_one_device(corpus, straight, tmp_path):
  c = opt_config(corpus, "muon")
  c.parallel = "auto"
  c.mesh.update(data=2, fsdp=2, tensor=2)
  train_and_evaluate(c, str(tmp_path))
  mesh_train, mesh_eval = read_metrics(tmp_path)
  one_train, one_eval = read_metrics(straight["muon"])
  assert_close(mesh_train, one_train)
  assert_close(mesh_eval, one_eval)


@pytest.mark.parametrize("name", ["muon", "adafactor", "lion"])
def test_the_optimizer_state_is_sharded_like_the_parameters(name, corpus):
  """Every moment shaped like its parameter takes its sharding (FSDP splits the matrices over
  the width); Muon leaves the embeddings to AdamW, Adafactor's factored moments are replicated."""
  c = opt_config(corpus, name)
  c.model.update(n_embd=64)  # a width that fsdp=2 splits in every matrix
  model = build_model(c.model, 32)
  tx = make_optimizer(c.train)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  boxed = jax.eval_shape(lambda: init_params(model, c.model, jax.random.key(0), boxed=True))
  params = sharding.param_shardings(boxed, mesh)
  abstract = jax.eval_shape(lambda: init_state(model, c.model, tx, jax.random.key(0)))
  state = sharding.state_shardings(abstract, params, tx, mesh)
  fc = params["h_0"]["ffn"]["fc"]["kernel"]
  assert tuple(fc.spec) == ("fsdp", "tensor")
  moments = [(leaf, s) for leaf, s in zip(jax.tree.leaves(abstract.opt_state),
                                          jax.tree.leaves(state.opt_state))]
  fc_shape = abstract.params["h_0"]["ffn"]["fc"]["kernel"].shape
  same = [s for leaf, s in moments if leaf.shape == fc_shape]
  assert same and all(s == fc for s in same)  # e.g. Muon's momentum, Lion's
  if name == "adafactor":  # its row and column statistics: replicated
    assert any(tuple(s.spec) == () and leaf.ndim >= 1 for leaf, s in moments)
  if name == "muon":
    labels = muon_labels(abstract.params)
    assert labels["wte"]["embedding"] == "adamw" and labels["ln_f"]["scale"] == "adamw"
    assert labels["h_0"]["attn"]["qkv"]["kernel"] == "muon"


# optax's quintic Newton-Schulz coefficients (Jordan's)
NS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g, steps=5, eps=1e-8):
  """The reference: X = G / ||G||_F (the wide way round), then X <- aX + (b A + c A^2) X with
  A = X X^T."""
  x = np.asarray(g, np.float64)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  x = x / (np.linalg.norm(x) + eps)
  a, b, c = NS
  for _ in range(steps):
    A = x @ x.T
    x = a * x + (b * A + c * A @ A) @ x
  return x if wide else x.T


@pytest.mark.floors
@pytest.mark.parametrize("scan,rms", [(False, 0.2), (True, 0.2), (False, 0.0)])
def test_muon_orthogonalizes_each_matrix_as_numpy_newton_schulz(scan, rms):
  """The first update of each kernel of a block is -lr x sqrt(max(in, out)) x 0.2 x NS(gradient)
  (train.muon_consistent_rms=0.2), or -lr x sqrt(max(1, out / in)) x NS(gradient) (0: Jordan's;
  optax 0.2.6 applied that factor twice), under every optax pyproject allows (the floors
  environment of .ci/run runs this too). The momentum's first value is a positive multiple of
  the gradient, which NS's normalization removes; the fused QKV is three C x C matrices, the
  output projection (H D) x C, each layer's alone; the embedding and head get AdamW's first
  step, -lr x sign(gradient)."""
  C, H, D, F, V, L = 16, 2, 8, 24, 12, 2
  shapes = {"qkv": (C, 3, H, D), "out": (H, D, C), "fc": (C, F)}
  lead = (L,) if scan else ()
  blocks = {"attn": {"qkv": {"kernel": lead + shapes["qkv"]},
                     "out": {"kernel": lead + shapes["out"]}},
            "ffn": {"fc": {"kernel": lead + shapes["fc"]}}}
  tree = {"wte": {"embedding": (V, C)}, "head": {"kernel": (C, V)},
          ("h" if scan else "h_0"): blocks}
  is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
  keys = iter(jax.random.split(jax.random.key(0), 20))
  grads = jax.tree.map(lambda s: jax.random.normal(next(keys), s), tree, is_leaf=is_shape)
  params = jax.tree.map(jnp.zeros_like, grads)
  c = default_config().train
  c.update(optimizer="muon", schedule="constant", warmup_steps=0, learning_rate=0.1,
           weight_decay=0.0, grad_clip=0.0, muon_consistent_rms=rms)
  scale = lambda fan_in, fan_out: (np.sqrt(max(fan_in, fan_out)) * rms if rms else
                                   np.sqrt(max(1, fan_out / fan_in)))
  tx = make_optimizer(c)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  lr = 0.1
  blk_g = grads["h" if scan else "h_0"]
  blk_u = updates["h" if scan else "h_0"]
  for layer in range(L if scan else 1):
    at = (lambda x: x[layer]) if scan else (lambda x: x)
    g, u = at(blk_g["attn"]["qkv"]["kernel"]), at(blk_u["attn"]["qkv"]["kernel"])
    for j in range(3):  # query, key, value: C x (H D) each
      want = -lr * scale(C, H * D) * newton_schulz(g[:, j].reshape(C, H * D))
      np.testing.assert_allclose(u[:, j].reshape(C, H * D), want, rtol=1e-4, atol=1e-5)
    g, u = at(blk_g["attn"]["out"]["kernel"]), at(blk_u["attn"]["out"]["kernel"])
    want = -lr * scale(H * D, C) * newton_schulz(g.reshape(H * D, C))
    np.testing.assert_allclose(u.reshape(H * D, C), want, rtol=1e-4, atol=1e-5)
    g, u = at(blk_g["ffn"]["fc"]["kernel"]), at(blk_u["ffn"]["fc"]["kernel"])
    want = -lr * scale(C, F) * newton_schulz(g)
    np.testing.assert_allclose(u, want, rtol=1e-4, atol=1e-5)
  for name, leaf in (("wte", "embedding"), ("head", "kernel")):
    np.testing.assert_allclose(updates[name][leaf], -lr * np.sign(grads[name][leaf]), rtol=1e-4)


def schedule_at(steps, **train):
  c = default_config()
  c.train.update({"learning_rate": 1.0, "min_lr": 0.1, "warmup_steps": 10, "max_steps": 110,
                  **train})
  validate(c)
  s = lr_schedule(c.train)
  return [float(s(i)) for i in steps]


def test_each_schedule_at_its_corners():
  # warmup (every schedule): lr (it + 1) / (warmup + 1), the peak at its end
  for kind in ("cosine", "wsd", "linear", "constant"):
    assert schedule_at([0, 9, 10], schedule=kind) == pytest.approx([1 / 11, 10 / 11, 1.0])
  # cosine: halfway down at the middle of (10, 110], min_lr at its end and after
  assert schedule_at([60, 110, 200], schedule="cosine") == pytest.approx([0.55, 0.1, 0.1])
  assert schedule_at([60, 110, 200], schedule="linear") == pytest.approx([0.55, 0.1, 0.1])
  assert schedule_at([60, 200], schedule="constant") == pytest.approx([1.0, 1.0])
  # wsd with the last 20% of the 100 steps after the warmup decaying: flat to 90, then a line
  assert schedule_at([50, 90, 100, 110, 200], schedule="wsd", decay_fraction=0.2) == \
      pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1])
  assert schedule_at([10, 60, 110], schedule="wsd", decay_fraction=1.0) == \
      pytest.approx([1.0, 0.55, 0.1])


def test_a_run_shorter_than_its_warmup_runs(tmp_path, capsys):
  # the baby config at 40 steps (lr_decay_steps follows max_steps) validates...
  baby = load_python_file(BABY, "configs/gpt_char_baby.py", "").get_config()
  baby.train.max_steps = 40
  validate(baby)
  assert schedule_at([39, 40], warmup_steps=100, max_steps=40, lr_decay_steps=40) == \
      pytest.approx([40 / 41, 1.0])  # warms up over the whole run
  # ... and trains, saying that the warmup is the run
  (tmp_path / "toy.txt").write_text(TOY_TEXT)
  c = tiny_config(tmp_path / "toy.txt", max_steps=4, lr_decay_steps=4, warmup_steps=100,
                  eval_interval=4)
  assert train_and_evaluate(c, str(tmp_path / "run"))["step"] == 4
  assert "warms up over all 4 of them" in capsys.readouterr().out
  # a decay set apart from max_steps, inside the warmup: refused, naming the field
  baby.train.lr_decay_steps = 30
  with pytest.raises(UserError, match="train.lr_decay_steps"):
    validate(baby)


def test_unknown_switches_are_refused():
  for field, value in (("train.optimizer", "adam"), ("train.schedule", "step"),
                       ("model.remat", "some")):
    c = default_config()
    section, leaf = field.split(".")
    c[section][leaf] = value
    with pytest.raises(UserError, match=field):
      validate(c)
  c = default_config()
  c.model.update(name="bigram", remat="full")
  with pytest.raises(UserError, match="model.remat"):
    validate(c)


def remat_losses(remat, scan, family="gpt", steps=2):
  """(losses of `steps` train steps with dropout on, the compiled step's temporaries in bytes)."""
  c = default_config()
  c.train.update(warmup_steps=0, learning_rate=1e-2)
  c.model.update(name=family, n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.1,
                 remat=remat, scan_layers=scan, dtype="float32")
  model = build_model(c.model, 20)
  tx = make_optimizer(c.train)
  state = init_state(model, c.model, tx, jax.random.key(0))
  keys = ("inputs", "decoder_inputs") if family == "transformer" else ("inputs",)
  tokens = np.random.default_rng(0).integers(1, 20, (1, 16, 33)).astype(np.int32)
  batch = {**{k: tokens[..., :-1] for k in keys}, "targets": tokens[..., 1:]}
  step = jax.jit(make_train_step(make_loss_fn(model, keys), tx))
  temp = step.lower(state, batch, jax.random.key(1)).compile().memory_analysis().temp_size_in_bytes
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  return np.array(losses), temp


@pytest.mark.parametrize("family,scan", [("gpt", False), ("gpt", True), ("transformer", True)])
def test_remat_gives_the_losses_of_none(family, scan):
  none, temp_none = remat_losses("none", scan, family)
  full, temp_full = remat_losses("full", scan, family)
  np.testing.assert_allclose(full, none, rtol=1e-6)
  assert none[-1] != none[0]  # the parameters moved between the steps compared
  if scan:  # each scanned layer keeps its input only: the temporaries shrink
    assert temp_full < 0.6 * temp_none, (temp_full, temp_none)
    # (unscanned, the CPU backend's step has the same temporaries whatever the setting)
  if family == "gpt" and scan:
    dots, _ = remat_losses("dots_with_no_batch_dims_saveable", scan, family, steps=1)
    np.testing.assert_allclose(dots, none[:1], rtol=1e-6)
