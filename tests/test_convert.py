"""convert.py: Hugging Face checkpoints in and out, checked against `transformers` itself.

Small random GPT2LMHeadModel and LlamaForCausalLM models are built here (no download), their
weights drawn large enough that every op shows in the logits, saved with save_pretrained, converted,
and run by both libraries on the same random tokens.
"""

import json
import os

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
import tokenizers
import torch
import transformers

from llm_jax import convert
from llm_jax.config import default_config
from llm_jax.decoding import lm as decoding
from llm_jax.errors import UserError
from llm_jax.fileio import read_metrics
from llm_jax.generate import generate_text
from llm_jax.training.workdir import load_run
from llm_jax.training.loop import train_and_evaluate

V = 96  # the vocabulary of the tiny models and of their tokenizer
TOL = 1e-4  # float32


def save_tokenizer(d):
  """A word-level tokenizer of V words 'w0' .. 'w95', saved as d/tokenizer.json."""
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(V)},
                                                         unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
  tok.save(os.path.join(d, "tokenizer.json"))


def randomize(model, seed=0):
  """Weights of O(1) effect: norms near 1, biases and matrices random (an init of std 0.02 would
  leave most of the network's ops invisible in the logits)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      p.copy_(1 + 0.2 * r if ("ln" in name or "norm" in name) and name.endswith("weight") else
              0.2 * r if name.endswith("bias") else r / p.shape[-1] ** 0.5)
  return model.eval()


def gpt2(**kw):
  cfg = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=V, n_positions=24, bos_token_id=0,
             eos_token_id=0, attn_implementation="eager")
  return randomize(transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **kw})))


def llama(**kw):
  cfg = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
             intermediate_size=40, vocab_size=V, max_position_embeddings=24, rms_norm_eps=1e-6,
             rope_theta=500.0, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
  return randomize(transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**cfg, **kw})))


def save(hf_model, d, tokenizer=True):
  hf_model.save_pretrained(d)
  if tokenizer:
    save_tokenizer(d)
  return str(d)


def hf_logits(hf_model, ids):
  with torch.no_grad():
    return hf_model(torch.tensor(ids)).logits.numpy()


def hf_cached_logits(hf_model, ids, prefill):
  """transformers' own KV-cached decoding: the prompt's prefill, then a token at a time."""
  cache = transformers.DynamicCache(config=hf_model.config)  # filled in place
  with torch.no_grad():
    logits = [hf_model(torch.tensor(ids[:, :prefill]), cache=cache, use_cache=True).logits]
    for t in range(prefill, ids.shape[1]):
      logits.append(hf_model(torch.tensor(ids[:, t:t + 1]), cache=cache, use_cache=True).logits)
  logits = [x.numpy() for x in logits]
  return np.concatenate(logits, axis=1)


def our_cached_logits(model, params, ids, prefill, block_size):
  cache = decoding.init_cache(model, ids.shape[0], block_size)
  step = jax.jit(lambda p, c, x: model.apply({"params": p, "cache": c}, x, decode=True,
                                             mutable=["cache"]))
  logits, out = step(params, cache, jnp.asarray(ids[:, :prefill]))
  all_logits = [np.asarray(logits)]
  for t in range(prefill, ids.shape[1]):
    logits, out = step(params, out["cache"], jnp.asarray(ids[:, t:t + 1]))
    all_logits.append(np.asarray(logits))
  return np.concatenate(all_logits, axis=1)


def tokens(B=2, T=24, seed=0):
  return np.random.default_rng(seed).integers(0, V, (B, T))


def check_logits(hf_model, workdir):
  """llm-jax's logits of the converted run equal transformers': full forward, and cached
  decoding (llm-jax's against transformers' own cache, and both against the full forward)."""
  config, _, model, params, _ = load_run(workdir)
  ids = tokens()
  ref = hf_logits(hf_model, ids)
  assert np.abs(ref).max() > 1.0  # the weights matter: the check can fail
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  hf_cached = hf_cached_logits(hf_model, ids, prefill=5)
  ours_cached = our_cached_logits(model, params, ids, 5, config.model.block_size)
  np.testing.assert_allclose(hf_cached, ref, atol=TOL, rtol=0)
  np.testing.assert_allclose(ours_cached, hf_cached, atol=TOL, rtol=0)
  return config


@pytest.mark.parametrize("kw", [{}, {"activation_function": "gelu", "n_inner": 48,
                                     "tie_word_embeddings": False}],
                         ids=["gpt2", "exact_gelu_untied"])
def test_gpt2_logits_equal_transformers(tmp_path, kw):
  hf_model = gpt2(**kw)
  r = convert.convert(save(hf_model, tmp_path / "hf"), tmp_path / "run")
  assert r["architecture"] == "GPT2LMHeadModel"
  config = check_logits(hf_model, r["workdir"])
  m = config.model
  assert (m.pos, m.norm_type, m.use_bias, m.n_layer, m.block_size) == (
      "learned", "layernorm", True, 2, 24)
  assert m.activation == ("gelu" if kw else "gelu_tanh")


@pytest.mark.parametrize("kw", [{}, {"num_key_value_heads": 1, "tie_word_embeddings": True},
                                {"num_key_value_heads": 4, "attention_bias": True,
                                 "mlp_bias": True}], ids=["gqa", "mqa_tied", "mha_biases"])
def test_llama_logits_equal_transformers(tmp_path, kw):
  hf_model = llama(**kw)
  r = convert.convert(save(hf_model, tmp_path / "hf"), tmp_path / "run")
  assert r["architecture"] == "LlamaForCausalLM"
  config = check_logits(hf_model, r["workdir"])
  m = config.model
  assert (m.pos, m.norm_type, m.activation, m.norm_eps, m.rope_theta) == (
      "rope", "rmsnorm", "swiglu", 1e-6, 500.0)
  assert m.n_kv_head == kw.get("num_key_value_heads", 2)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama"])
def test_convert_then_export_gives_back_the_same_tensors(tmp_path, make):
  hf_model = make()
  src = save(hf_model, tmp_path / "hf")
  run = convert.convert(src, tmp_path / "run")["workdir"]
  out = convert.export(run, tmp_path / "out")
  assert out["tokenizer"] == "tokenizer.json"
  before, after = load_file(os.path.join(src, "model.safetensors")), load_file(
      os.path.join(out["out"], "model.safetensors"))
  assert sorted(before) == sorted(after)
  for k in before:
    np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  again = transformers.AutoModelForCausalLM.from_pretrained(out["out"],
                                                             attn_implementation="eager").eval()
  ids = tokens(seed=1)
  np.testing.assert_array_equal(hf_logits(again, ids), hf_logits(hf_model, ids))
  assert transformers.PreTrainedTokenizerFast(
      tokenizer_file=os.path.join(out["out"], "tokenizer.json")).encode("w3 w5") == [3, 5]


def finetune_config(run):
  """configs/finetune.py's get_config(run)."""
  path = pathlib.Path(__file__).parent.parent / "configs" / "finetune.py"
  spec = importlib.util.spec_from_file_location("finetune", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(str(run))


def tiny_config(tmp_path, **model):
  c = default_config()
  c.parallel = "none"
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"{w}\n" for w in ["abcdefgh", "hgfedcba"] * 300))
  c.data.corpus, c.data.path = "text_file", str(corpus)
  c.model.update(n_layer=1, n_head=2, n_embd=16, block_size=16, **model)
  c.train.update(batch_size=4, max_steps=10, eval_interval=10, eval_iters=2, log_interval=5,
                 checkpoint_every=10, sample_tokens=0, warmup_steps=2, learning_rate=1e-2)
  return c


@pytest.mark.parametrize("model", [
    {"activation": "gelu"},  # nanoGPT's: no biases (exported as zeros), exact GELU
    {"pos": "rope", "norm_type": "rmsnorm", "activation": "swiglu", "n_kv_head": 1,
     "tie_embeddings": False}], ids=["gpt2_layout", "llama_layout"])
def test_a_run_trained_here_exports_with_its_logits(tmp_path, model):
  c = tiny_config(tmp_path, **model)
  train_and_evaluate(c, str(tmp_path / "run"))
  out = convert.export(tmp_path / "run", tmp_path / "out")
  assert out["architecture"] == ("LlamaForCausalLM" if "rope" in model.values() else
                                 "GPT2LMHeadModel")
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out["out"],
                                                               attn_implementation="eager").eval()
  # a char run has no BOS/EOS token: none is named (not GPT-2's 50256, past its vocabulary)
  assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id) == (None, None)
  _, tok, ours, params, _ = load_run(tmp_path / "run")
  ids = np.random.default_rng(0).integers(0, tok.vocab_size, (2, 16))
  np.testing.assert_allclose(np.asarray(ours.apply({"params": params}, jnp.asarray(ids))),
                             hf_logits(hf_model, ids), atol=TOL, rtol=0)


def test_finetuning_starts_where_the_source_run_ended(tmp_path):
  """A run with train.init_from evaluates at step 0 exactly as its source did at its last step
  (same data and evaluation batches), then trains on."""
  c = tiny_config(tmp_path)
  source = train_and_evaluate(c, str(tmp_path / "source"))
  c.train.init_from = str(tmp_path / "source")
  c.model.dropout = 0.1  # may differ: no parameter depends on it
  train_and_evaluate(c, str(tmp_path / "tuned"))
  records = [r for r in read_metrics(str(tmp_path / "tuned" / "metrics.jsonl")) if "val_loss" in r]
  assert records[0]["step"] == 0
  assert records[0]["val_loss"] == pytest.approx(source["val_loss"], abs=1e-6)
  assert records[-1]["step"] == 10 and records[-1]["val_loss"] < records[0]["val_loss"]
  fresh = tiny_config(tmp_path)  # the same config from a fresh init starts higher
  fresh.train.update(max_steps=1, warmup_steps=0)
  train_and_evaluate(fresh, str(tmp_path / "fresh"))
  fresh_0 = read_metrics(str(tmp_path / "fresh" / "metrics.jsonl"))[0]
  assert fresh_0["step"] == 0 and fresh_0["val_loss"] > records[0]["val_loss"] + 0.1


def test_a_converted_checkpoint_fine_tunes(tmp_path):
  run = convert.convert(save(gpt2(), tmp_path / "hf"), tmp_path / "run")["workdir"]
  corpus = tmp_path / "words.txt"
  corpus.write_text(" ".join(f"w{i % 7 + 1}" for i in range(3000)))
  c = finetune_config(run)
  c.parallel = "none"
  c.data.corpus, c.data.path = "text_file", str(corpus)
  c.model.block_size = 16
  c.train.update(batch_size=4, max_steps=30, eval_interval=30, eval_iters=2, log_interval=10,
                 checkpoint_every=30, sample_tokens=5, learning_rate=3e-3, min_lr=3e-4,
                 warmup_steps=5)
  summary = train_and_evaluate(c, str(tmp_path / "tuned"))
  # its tokenizer drops the sample's newline prompt: the sample starts from token 0 instead
  assert len(summary["sample"].split()) == 5
  records = [r for r in read_metrics(str(tmp_path / "tuned" / "metrics.jsonl")) if "val_loss" in r]
  assert summary["val_loss"] < records[0]["val_loss"] - 1.0  # the repeating words are learned
  _, tok, _, _, step = load_run(tmp_path / "tuned")
  assert step == 30 and tok.to_dict() == load_run(run)[1].to_dict()
  with pytest.raises(UserError, match="encodes to no tokens"):
    generate_text(str(tmp_path / "tuned"), prompt="  ")


def test_bad_checkpoints_and_runs_are_one_clear_error(tmp_path):
  src = save(gpt2(), tmp_path / "hf", tokenizer=False)
  with pytest.raises(UserError, match="no tokenizer.json.*--tokenizer=hf:"):
    convert.convert(src, tmp_path / "run")
  with pytest.raises(UserError, match="--tokenizer=char is made from a corpus"):
    convert.convert(src, tmp_path / "run", tokenizer="char")
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
  with pytest.raises(UserError, match="architectures=\\['BertModel'\\].*GPT2LMHeadModel or "
                                      "LlamaForCausalLM"):
    convert.convert(src, tmp_path / "run")
  os.remove(tmp_path / "hf" / "model.safetensors")
  with pytest.raises(UserError, match="no model.safetensors: llm-jax reads safetensors only"):
    convert.convert(src, tmp_path / "run")
  with pytest.raises(UserError, match="rope_type='llama3'"):
    convert.convert(save(llama(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5,
                                                "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8}),
                         tmp_path / "l3"), tmp_path / "run")
  c = tiny_config(tmp_path, qk_norm=True)
  c.train.update(max_steps=1, checkpoint_every=1, warmup_steps=0)
  train_and_evaluate(c, str(tmp_path / "qk"))
  with pytest.raises(UserError, match="qk_norm=False"):
    convert.export(tmp_path / "qk", tmp_path / "out")
  c = tiny_config(tmp_path)
  c.train.init_from = str(tmp_path / "qk")
  with pytest.raises(UserError, match="config.model.qk_norm is False, the init_from run's True"):
    train_and_evaluate(c, str(tmp_path / "tuned"))


def shipped_config(name):
  path = pathlib.Path(__file__).parent.parent / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_shipped_configs_are_the_hugging_face_shapes():
  """configs/gpt2_small.py is what convert makes of GPT-2 small's config.json (but the padded
  vocabulary), and configs/llama_small.py exports as a Llama."""
  ours = shipped_config("gpt2_small.py").model
  fields = convert.gpt2_model_fields(transformers.GPT2Config().to_dict())
  for field, value in fields.items():
    if field not in ("vocab_size", "n_kv_head", "ffn_hidden"):  # 0 there means these
      assert ours[field] == value, field
  assert (fields["vocab_size"], fields["ffn_hidden"], ours.ffn_hidden) == (50257, 3072, 0)
  assert convert.layout_of(ours) == "GPT2LMHeadModel"
  assert convert.layout_of(shipped_config("llama_small.py").model) == "LlamaForCausalLM"
