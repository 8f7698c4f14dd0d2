"""`llm-jax bench`: the FLOP formula and the JSON fields, on a tiny GPT (a few seconds; nothing timed)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from llm_jax import peaks as peak
from llm_jax.bench import train as bench_train
from llm_jax.config import default_config
from llm_jax.models import build_model, flops, flops_per_token


def test_flops_per_token_is_6n_plus_attention():
  c = default_config()
  c.model.update(n_layer=4, n_head=4, n_embd=128, block_size=64)
  # nanoGPT's baby config: N = 804,096 parameters less the 64 x 128 position table (its estimate_mfu)
  assert flops_per_token(c.model, 795_904) == 5_168_640
  c.model.update(n_layer=2, block_size=16, n_embd=32)
  assert flops_per_token(c.model, 1000) == 6 * 1000 + 12 * 2 * 16 * 32
  c.model.name = "bigram"
  assert flops_per_token(c.model, 1000) == 6 * 1000


def test_count_params_leaves_out_the_position_table():
  c = default_config()
  c.model.update(n_layer=1, n_head=2, n_embd=16, block_size=8)
  model = build_model(c.model, 10)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                    jnp.zeros((1, 8), jnp.int32))["params"])
  total, for_flops = flops.count_params(params)
  assert total == sum(x.size for x in jax.tree.leaves(params))
  assert total - for_flops == 8 * 16


def test_datasheet_peaks_by_device_kind():
  assert peak.datasheet_tflops("NVIDIA H100 80GB HBM3")["bfloat16"] == 989.0
  assert peak.datasheet_tflops("cpu") is None


def test_run_reports_every_field():
  c = default_config()
  c.parallel = "none"
  c.model.update(n_layer=1, n_head=2, n_embd=16, block_size=8)
  c.train.batch_size = 4
  r = bench_train.run(c, steps=2, warmup=0, vocab_size=10, decode_tokens=3, eval_repeats=1,
                      peak_n=64)
  for key in ("compile_s", "tokens_per_s", "cpu_ms_per_step", "eval_ms_per_batch", "decode",
              "flops_per_token", "achieved_gflops", "peak_gflops", "mfu", "mfu_datasheet",
              "host_peak_rss_mb", "device_memory", "loadavg"):
    assert key in r, key
  assert set(r["train_ms_per_step"]) == {"median", "p10", "p90", "min"}
  assert r["tokens_per_step"] == 4 * 8
  assert r["flops_per_token"] == flops_per_token(c.model, r["params_for_flops"])
  assert r["mfu"] > 0 and r["peak_gflops"]["float32"] > 0
  assert r["decode"]["new_tokens"] == 3
  assert "MFU" in bench_train.table(r)
  # what 'auto' chose and why, as a run's start line says it (the suite pins it: conftest)
  assert r["dtype_chosen"] == "model.dtype auto -> float32: $LLM_JAX_AUTO_DTYPE=float32"
  assert (r["model"]["dtype_asked"], r["model"]["dtype"]) == ("auto", "float32")
  assert any(line.startswith("precision ") and line.endswith(r["dtype_chosen"])
             for line in bench_train.table(r).splitlines())
  # one device: it holds the whole state (params, two Adam moments, counters); XLA's figures
  memory = r["state_memory"]
  assert memory["state_bytes_per_device"] == memory["unsharded_bytes"]
  assert 3 * 4 * r["params"] < memory["unsharded_bytes"] < 3 * 4 * r["params"] + 64
  assert memory["temp_size"] > 0 and memory["argument_size"] >= memory["unsharded_bytes"]


def test_under_fsdp_each_device_holds_an_eighth_of_the_state():
  c = default_config()
  c.model.update(n_layer=1, n_head=2, n_embd=16, block_size=8)
  c.mesh.update(data=1, fsdp=8)
  c.train.batch_size = 8
  r = bench_train.run(c, steps=1, warmup=0, vocab_size=16, decode_tokens=0, eval_repeats=1,
                      peak_n=64)
  memory = r["state_memory"]
  assert r["devices"] == 8 and r["parallel"] == "mesh data=1 fsdp=8 tensor=1"
  assert memory["state_bytes_per_device"] <= memory["unsharded_bytes"] / 6
