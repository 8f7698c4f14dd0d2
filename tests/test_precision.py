"""models/precision.py (bf16 matmuls, f32 accumulation and gradients; model.dtype='auto') and
models/dropout.py (masks from 8/16/32-bit random integers)."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from llm_jax import peaks as peak
from llm_jax.config import default_config, validate
from llm_jax.errors import UserError
from llm_jax.models import build_model, precision
from llm_jax.models.dropout import Dropout, random_uints
from llm_jax.training import parallel
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.optimizer import make_optimizer
from llm_jax.training.steps import init_state, make_evaluate, make_train_step

bf16 = jnp.bfloat16
rounded = lambda x: x.astype(bf16).astype(jnp.float32)  # what the bf16 matmuls multiply


@pytest.mark.parametrize("spec,sa,sb", [
    ("btkgd,bskd->bkgts", (2, 5, 2, 3, 8), (2, 7, 2, 8)),  # attention's scores
    ("bkgts,bskd->btkgd", (2, 2, 3, 5, 7), (2, 7, 2, 8)),  # attention's values
])
def test_bf16_einsum_and_its_gradients_are_f32_sums_of_bf16_products(spec, sa, sb):
  a, b = (jax.random.normal(jax.random.key(i), s) for i, s in enumerate((sa, sb)))
  out_shape = jnp.einsum(spec, a, b).shape
  g = jax.random.normal(jax.random.key(2), out_shape)
  y, vjp = jax.vjp(lambda a, b: precision.einsum(spec, a, b, bf16), a, b)
  da, db = vjp(g)
  assert y.dtype == jnp.float32 and da.dtype == a.dtype == db.dtype
  # products of bf16 numbers are exact in f32: the results are the f32 einsums of rounded inputs
  exact = lambda s, x, y: jnp.einsum(s, rounded(x), rounded(y), precision="highest")
  ia, ib = spec.split("->")[0].split(",")
  out = spec.split("->")[1]
  np.testing.assert_allclose(y, exact(spec, a, b), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(da, rounded(exact(f"{out},{ib}->{ia}", g, b)), rtol=1e-2, atol=1e-5)
  np.testing.assert_allclose(db, rounded(exact(f"{out},{ia}->{ib}", g, a)), rtol=1e-2, atol=1e-5)
  # and near the f32 einsum's, to bf16's precision
  np.testing.assert_allclose(y, jnp.einsum(spec, a, b), rtol=0.05, atol=0.05)


def test_bf16_dense_matches_f32_dense_to_bf16_precision():
  x = jax.random.normal(jax.random.key(0), (4, 6, 32))
  dense = lambda dtype: nn.DenseGeneral((2, 16), dtype=dtype,
                                        dot_general=precision.dot_general(dtype))
  params = dense(jnp.float32).init(jax.random.key(1), x)
  loss = lambda p, dtype: jnp.sum(jnp.sin(dense(dtype).apply(p, x)))
  (l32, g32), (l16, g16) = (jax.value_and_grad(loss)(params, d) for d in (jnp.float32, bf16))
  assert precision.dot_general(jnp.float32) is jax.lax.dot_general
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * float(jnp.abs(b).max()))


def test_bf16_gpt_trains_as_the_f32_one(toy_corpus, tmp_path):
  runs = {}
  for dtype in ("float32", "bfloat16"):
    c = tiny_config(toy_corpus, max_steps=60, lr_decay_steps=60, eval_interval=60,
                    learning_rate=1e-2)
    c.model.dtype = dtype
    runs[dtype] = train_and_evaluate(c, str(tmp_path / dtype))
  first = json.loads((tmp_path / "bfloat16" / "metrics.jsonl").read_text().splitlines()[0])
  assert runs["bfloat16"]["val_loss"] < 0.6 * first["val_loss"]
  assert abs(runs["bfloat16"]["val_loss"] - runs["float32"]["val_loss"]) < 0.05, runs


def dot_operand_types(hlo: str) -> dict:
  """{op_name of each dot in compiled HLO text: its two operands' element types}."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
  dots = re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)[^\n]*?op_name=\"([^\"]+)\"", hlo)
  return {op: (types[a], types[b]) for a, b, op in dots}


@pytest.mark.parametrize("mesh", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_the_backward_matmuls_of_a_bf16_step_multiply_as_the_forward_ones(toy_corpus, mesh):
  # XLA's CPU backend upcasts a bf16 dot to float32 where its operands' layout is not one its
  # fast kernels take: the weights' gradients x^T g did so (a quarter of the step's matmuls at
  # a fifth of the speed) until precision.py wrote x^T out. A machine without bf16 kernels may
  # upcast them all: the test asks that every matmul of the blocks multiplies alike
  c = tiny_config(toy_corpus)
  c.parallel = "auto"
  c.mesh.update(mesh)
  c.model.update(dtype="bfloat16", n_head=4)
  model, tx = build_model(c.model, 64), make_optimizer(c.train)
  place = parallel.placement(c, model, tx)
  state = place.create_state(lambda: init_state(model, c.model, tx, jax.random.key(0)))
  loss_fn = make_loss_fn(model)
  step, _ = place.steps(make_train_step(loss_fn, tx, place.axis_name),
                        make_evaluate(loss_fn, place.axis_name), jax.random.key(1))
  tokens = np.zeros((1, c.train.batch_size, c.model.block_size), np.int32)
  batch = place.put_batch({"inputs": tokens, "targets": tokens})
  hlo = step.lower(state, batch).compile().as_text()
  blocks = {op: t for op, t in dot_operand_types(hlo).items() if "_sublayer" in op}
  backward = [op for op in blocks if "transpose(" in op]
  # per layer: 4 projections and 2 attention products forward, twice that backward
  assert len(blocks) >= 3 * 6 and len(backward) >= 2 * 6, sorted(blocks)
  assert len(set(blocks.values())) == 1, {t: [op for op in blocks if blocks[op] == t][:3]
                                          for t in set(blocks.values())}


@pytest.fixture
def measured(monkeypatch, tmp_path):
  """'auto' decided by the peaks: no override, a fresh cache file, measure() counted."""
  monkeypatch.delenv(peak.AUTO_ENV, raising=False)
  monkeypatch.setenv("LLM_JAX_CACHE_DIR", str(tmp_path / "cache"))
  calls = []
  def measure(**kw):
    calls.append(kw)
    return {"float32": 100.0, "bfloat16": measure.bf16}
  measure.bf16 = 300.0
  monkeypatch.setattr(peak, "measure", measure)
  monkeypatch.setattr(peak, "_SEEN", {})
  return measure, calls


def test_auto_measures_once_keeps_the_peaks_and_chooses_bf16_only_where_it_is_1_5x_as_fast(
    measured, monkeypatch):
  measure, calls = measured
  measure.bf16 = 174.0  # 1.74x, as a Zen 4 in a process of two devices: bf16 steps 1.6x as fast
  assert peak.auto_dtype() == ("bfloat16", "this machine's bf16 matmul is 1.7x its f32 "
                                           "(at least 1.5x)")
  table = json.loads(peak.cache_file().read_text())
  assert list(table) == [peak.machine()] and len(calls) == 1
  monkeypatch.setattr(peak, "_SEEN", {})  # a new process: the file answers
  assert peak.auto_dtype()[0] == "bfloat16" and len(calls) == 1
  measure.bf16 = 140.0  # another machine, whose bf16 is 1.4x its f32
  monkeypatch.setattr(peak, "_SEEN", {})
  monkeypatch.setattr(peak, "machine", lambda: "another machine")
  assert peak.auto_dtype()[0] == "float32" and len(calls) == 2
  assert len(json.loads(peak.cache_file().read_text())) == 2


def test_building_a_model_never_measures_and_an_unresolved_auto_is_float32(measured):
  _, calls = measured
  c = default_config()
  assert c.model.dtype == "auto"
  model = build_model(c.model, 65)
  assert model.cfg.dtype == "float32" and not calls
  assert precision.resolve("float32") == "float32" and precision.resolve("bfloat16") == "bfloat16"


def test_auto_is_overridden_by_the_environment_and_a_bad_value_is_one_line(measured, monkeypatch):
  _, calls = measured
  monkeypatch.setenv(peak.AUTO_ENV, "float32")
  assert peak.auto_dtype()[0] == "float32" and not calls
  monkeypatch.setenv(peak.AUTO_ENV, "fp8")
  with pytest.raises(UserError, match=peak.AUTO_ENV):
    peak.auto_dtype()


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_dropout_drops_the_rounded_rate_and_keeps_the_mean(bits):
  rate = 0.2
  x = jnp.ones((64, 3, 1001))  # a last axis no multiple of 4 or 2
  y = Dropout(rate, bits).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  levels = 2 ** bits
  expected = min(round(rate * levels), levels) / levels if bits < 32 else rate
  dropped = float(jnp.mean(y == 0))
  sigma = np.sqrt(expected * (1 - expected) / x.size)
  assert abs(dropped - expected) < 5 * sigma, (dropped, expected)
  assert abs(float(jnp.mean(y)) - 1.0) < 5 * sigma / (1 - expected)
  np.testing.assert_allclose(y[y != 0], 1 / (1 - expected), rtol=1e-6)


def test_random_uints_are_uniform_and_a_traced_rate_drops_its_share():
  u = random_uints(jax.random.key(1), (100, 4003), 8)
  assert u.shape == (100, 4003) and u.dtype == jnp.uint8
  counts = np.bincount(np.asarray(u).ravel(), minlength=256)
  assert counts.min() > 0.8 * u.size / 256 and counts.max() < 1.2 * u.size / 256
  x = jnp.ones((256, 512))
  drop = lambda rate: Dropout(rate, 8).apply({}, x, deterministic=False,
                                             rngs={"dropout": jax.random.key(2)})
  shares = jax.vmap(lambda r: jnp.mean(drop(r) == 0))(jnp.array([0.0, 0.1, 0.5]))
  np.testing.assert_allclose(shares, [0.0, 26 / 256, 0.5], atol=0.01)


def test_a_rate_that_rounds_to_one_is_a_config_error(toy_corpus):
  c = tiny_config(toy_corpus)
  c.model.dropout = 0.999
  with pytest.raises(UserError, match="model.dropout.*dropout_bits=8"):
    validate(c)
  c.model.dropout_bits = 16
  validate(c)
  c.model.dropout_bits = 12
  with pytest.raises(UserError, match="model.dropout_bits=12 is invalid: use 8, 16 or 32"):
    validate(c)
