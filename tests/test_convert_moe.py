"""convert.py's mixtures of experts: tiny random MixtralForCausalLM and Qwen3MoeForCausalLM built
with transformers convert with transformers' logits (full and KV-cached), export back to the same
tensors and logits, and decode greedily as transformers does; what llm-jax cannot represent is
refused in one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from llm_jax import convert
from llm_jax.decoding import lm as decoding
from llm_jax.errors import UserError
from llm_jax.training.workdir import load_run
from test_convert import V, check_logits, hf_logits, randomize, save, tokens

COMMON = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
              vocab_size=V, max_position_embeddings=24, num_experts_per_tok=2, rms_norm_eps=1e-6,
              bos_token_id=0, eos_token_id=0, attn_implementation="eager")


def mixtral(**kw):
  cfg = dict(COMMON, intermediate_size=24, num_local_experts=4, rope_theta=500.0)
  return randomize(transformers.MixtralForCausalLM(transformers.MixtralConfig(**{**cfg, **kw})))


def qwen3_moe(**kw):
  cfg = dict(COMMON, head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_experts=4,
             norm_topk_prob=False)
  return randomize(transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**{**cfg, **kw})))


@pytest.mark.parametrize("make", [mixtral, qwen3_moe], ids=["mixtral", "qwen3_moe"])
def test_a_converted_moe_has_transformers_logits_and_exports_back(tmp_path, make):
  hf_model = make()
  src = save(hf_model, tmp_path / "hf")
  r = convert.convert(src, tmp_path / "run")
  assert r["architecture"] == hf_model.config.architectures[0]
  config = check_logits(hf_model, r["workdir"])  # full forward and KV-cached, to 1e-4
  m = config.model
  assert (m.moe_experts, m.moe_top_k, m.moe_renormalize, m.qk_norm) == (
      4, 2, make is mixtral, make is qwen3_moe)
  # greedy decoding: transformers' generate and ours pick the same tokens
  prompt = tokens(B=1, T=4, seed=2)
  with torch.no_grad():
    want = hf_model.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False,
                             pad_token_id=0).numpy()
  _, _, model, params, _ = load_run(r["workdir"])
  got = decoding.generate(model, params, jnp.asarray(prompt), jax.random.key(0),
                          max_new_tokens=12, block_size=m.block_size, greedy=True)
  np.testing.assert_array_equal(np.asarray(got), want)
  # export: the same tensors, and transformers loads them to the same logits
  out = convert.export(r["workdir"], tmp_path / "out")
  before = load_file(os.path.join(src, "model.safetensors"))
  after = load_file(os.path.join(out["out"], "model.safetensors"))
  assert sorted(before) == sorted(after)
  for k in before:
    np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  again = transformers.AutoModelForCausalLM.from_pretrained(out["out"],
                                                             attn_implementation="eager").eval()
  ids = tokens(seed=1)
  np.testing.assert_array_equal(hf_logits(again, ids), hf_logits(hf_model, ids))


def test_what_llm_jax_cannot_represent_is_one_line(tmp_path):
  src = save(mixtral(), tmp_path / "hf")
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  # a router llm-jax lacks
  (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "scoring_func": "sigmoid"}))
  with pytest.raises(UserError, match=r"scoring_func='sigmoid', which llm-jax's model does not "
                                      r"have: .* = 'softmax'"):
    convert.convert(src, tmp_path / "run")
  (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "router_jitter_noise": 0.1}))
  with pytest.raises(UserError, match="router_jitter_noise=0.1"):
    convert.convert(src, tmp_path / "run")
  with pytest.raises(UserError, match=r"mlp_only_layers=\[1\]"):
    convert.convert(save(qwen3_moe(mlp_only_layers=[1]), tmp_path / "q"), tmp_path / "run")
  # a run whose balancing bias moved exports logits no Mixtral computes
  (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
  run = convert.convert(src, tmp_path / "run")["workdir"]
  from llm_jax.training import checkpoint
  from test_faults import saved_state
  manager = checkpoint.make_manager(run, 2, create=False)
  state = saved_state(manager, 0)
  manager.close()
  assert np.all(state["params"]["h_0"]["ffn"]["bias"] == 0)
  with pytest.raises(UserError, match="non-zero balancing bias"):
    convert._no_balancing_bias(np.array([0.0, 0.1, 0.0, 0.0]))
