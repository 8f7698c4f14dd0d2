"""Checkpoints in and out of Hugging Face transformers' layout: config.json + model.safetensors.

    llm-jax convert --from=hf/gpt2 --workdir=runs/gpt2     # a run dir: generate, evaluate, train
    llm-jax export --workdir=runs/gpt2 --to=hf/gpt2_again  # AutoModelForCausalLM.from_pretrained

Four architectures, each a layout: `GPT2LMHeadModel` (learned positions, pre-LayerNorm with
biases, GELU, tied head), `LlamaForCausalLM` (rotary positions, pre-RMSNorm, SwiGLU, grouped
KV heads, no biases), and Llama's two mixtures of experts (models/moe.py), `MixtralForCausalLM`
and `Qwen3MoeForCausalLM` (QK-norm; softmax top-k routers, their experts' tensors one each,
stacked into our (E, in, out) kernels). A layout maps the checkpoint's config.json to
`config.model` fields and back, and lists one Rule per tensor: its Hugging Face names, the
path of the llm-jax parameter, and the two array functions between them (torch's Linear is
(out, in), flax's Dense kernel (in, out); GPT-2's Conv1D is (in, out) already; heads are split
into their own axes here).

Tensors are read and written with the `safetensors` package (never pickle), as float32: llm-jax
keeps its parameters in float32 (`model.dtype` is the compute dtype). A run converted here is a
run like any other: its config.json, its tokenizer (the checkpoint's tokenizer.json, copied into
the run, else tiktoken's gpt2 for GPT-2's vocabulary of 50257, else --tokenizer), and a step-0
checkpoint with a fresh optimizer state. Fine-tuning starts a new run from it
(`train.init_from`, configs/finetune.py).
"""

import json
import math
import os
import shutil
from typing import Callable, NamedTuple

import jax
import numpy as np

from llm_jax.config import default_config, validate
from llm_jax.data.chat_template import LLM_JAX_TEMPLATE, read_template
from llm_jax.data.tokenizers import (CharTokenizer, ChatTokenizer, HFTokenizer, _hf_tokenizers,
                                     make_tokenizer)
from llm_jax.errors import UserError
from llm_jax.fileio import write_json
from llm_jax.models import FAMILIES, build_model, init_params
from llm_jax.models.gpt import GPT
from llm_jax.models.model_config import ModelConfig
from llm_jax.training import checkpoint, workdir as workdir_lib
from llm_jax.training.optimizer import make_optimizer
from llm_jax.training.steps import create_state

# the source's config.json, kept in the converted run: export starts from it (token ids, names)
HF_CONFIG_FILE = workdir_lib.HF_CONFIG_FILE
# the source's tokenizer.json, copied into the converted run (its data.tokenizer is hf:<this>)
HF_TOKENIZER_FILE = "hf_tokenizer.json"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"


class Rule(NamedTuple):
  hf: tuple  # the Hugging Face tensor names
  path: tuple  # the llm-jax parameter: keys into params
  to_ours: Callable  # (*hf arrays) -> our array
  to_hf: Callable  # our array -> tuple of hf arrays


def _t(x):  # torch Linear (out, in) <-> flax Dense kernel (in, out)
  return np.ascontiguousarray(x.T)


def _same(x):
  return x


def _one(f):
  return lambda x: (f(x),)


# --- GPT2LMHeadModel -----------------------------------------------------------------------------

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu", "relu2": "relu2"}  # (transformers' ACT2FN has relu(x)^2)


def gpt2_model_fields(hf: dict) -> dict:
  _hf_require(hf, "activation_function", lambda v: v in GPT2_ACTIVATIONS,
              f"one of {', '.join(GPT2_ACTIVATIONS)}", "gelu_new")
  for key, default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False)):
    _hf_require(hf, key, lambda v, d=default: v == d, repr(default), default)
  C = hf["n_embd"]
  return {"n_layer": hf["n_layer"], "n_head": hf["n_head"], "n_embd": C,
          "n_kv_head": hf["n_head"], "ffn_hidden": hf.get("n_inner") or 4 * C,
          "block_size": hf["n_positions"], "max_len": hf["n_positions"],
          "vocab_size": hf["vocab_size"], "norm": "pre", "norm_type": "layernorm",
          "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "pos": "learned",
          "activation": GPT2_ACTIVATIONS[hf.get("activation_function", "gelu_new")],
          "use_bias": True, "tie_embeddings": hf.get("tie_word_embeddings", True)}


def gpt2_config(m: ModelConfig, block_size: int) -> dict:
  act = {v: k for k, v in reversed(GPT2_ACTIVATIONS.items())}
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
          "n_positions": m.max_len, "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head,
          "n_inner": m.ffn_hidden, "activation_function": act[m.activation],
          "layer_norm_epsilon": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def gpt2_rules(m: ModelConfig) -> list:
  C, H, D, F = m.n_embd, m.n_head, m.n_embd // m.n_head, m.ffn_hidden
  rules = [Rule(("wte.weight",), ("wte", "embedding"), _same, _one(_same)),
           Rule(("wpe.weight",), ("wpe", "table"), _same, _one(_same))]

  def linear(hf, path, shape_in, shape_out):  # Conv1D (in, out) <-> our kernel; and its bias
    out = [Rule((hf + ".weight",), path + ("kernel",),
                lambda w: w.reshape(shape_in + shape_out),
                _one(lambda k: k.reshape(math.prod(shape_in), math.prod(shape_out))))]
    return out + [_bias(m, hf + ".bias", path, shape_out)]

  for i in range(m.n_layer):
    hf, ours = f"h.{i}.", (f"h_{i}",)
    rules += _norm_rules(m, hf + "ln_1", ours + ("ln_attn",))
    rules += linear(hf + "attn.c_attn", ours + ("attn", "qkv"), (C,), (3, H, D))
    rules += linear(hf + "attn.c_proj", ours + ("attn", "out"), (H, D), (C,))
    rules += _norm_rules(m, hf + "ln_2", ours + ("ln_ffn",))
    rules += linear(hf + "mlp.c_fc", ours + ("ffn", "fc"), (C,), (F,))
    rules += linear(hf + "mlp.c_proj", ours + ("ffn", "proj"), (F,), (C,))
  rules += _norm_rules(m, "ln_f", ("ln_f",))
  if not m.tie_embeddings:
    rules.append(Rule(("lm_head.weight",), ("head", "kernel"), _t, _one(_t)))
  return rules


def _norm_rules(m, hf, path):
  rules = [Rule((hf + ".weight",), path + ("scale",), _same, _one(_same))]
  return rules + ([_bias(m, hf + ".bias", path, (m.n_embd,))] if m.norm_type == "layernorm" else [])


def _bias(m, hf, path, shape):
  """A bias; a run without biases (use_bias=False) exports zeros, the same function."""
  if m.use_bias:
    return Rule((hf,), path + ("bias",), lambda b: b.reshape(shape),
                _one(lambda b: b.reshape(-1)))
  return Rule((hf,), None, None, lambda: (np.zeros(math.prod(shape), np.float32),))


# --- LlamaForCausalLM ----------------------------------------------------------------------------

def llama_model_fields(hf: dict) -> dict:
  C, H = hf["hidden_size"], hf["num_attention_heads"]
  _hf_require(hf, "hidden_act", lambda v: v == "silu", "'silu' (SwiGLU)", "silu")
  _hf_require(hf, "head_dim", lambda v: v in (None, C // H), f"hidden_size / num_attention_heads "
              f"= {C // H}", None)
  _hf_require(hf, "mlp_bias", lambda v: v == hf.get("attention_bias", False),
              "equal to attention_bias (llm-jax's use_bias is one switch)", False)
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise UserError(f"the checkpoint's config.json has rope_type={rope_type!r}: llm-jax's rotary "
                    f"positions are the unscaled ones (rope_type 'default'); convert a model "
                    f"without RoPE scaling")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  return {"n_layer": hf["num_hidden_layers"], "n_head": H, "n_embd": C,
          "n_kv_head": hf.get("num_key_value_heads") or H, "ffn_hidden": hf["intermediate_size"],
          "block_size": hf["max_position_embeddings"], "vocab_size": hf["vocab_size"],
          "norm": "pre", "norm_type": "rmsnorm", "norm_eps": hf.get("rms_norm_eps", 1e-6),
          "pos": "rope", "rope_theta": float(theta), "activation": "swiglu",
          "use_bias": hf.get("attention_bias", False),
          "tie_embeddings": hf.get("tie_word_embeddings", False)}


def llama_config(m: ModelConfig, block_size: int) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": m.vocab_size,
          "hidden_size": m.n_embd, "intermediate_size": m.ffn_hidden,
          "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head,
          "num_key_value_heads": m.n_kv_head, "head_dim": m.n_embd // m.n_head,
          "hidden_act": "silu", "max_position_embeddings": block_size,
          "rms_norm_eps": m.norm_eps, "rope_theta": m.rope_theta,
          "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
          "attention_bias": m.use_bias, "mlp_bias": m.use_bias,
          "tie_word_embeddings": m.tie_embeddings, "attention_dropout": 0.0}


def llama_rules(m: ModelConfig) -> list:
  C, H, K, D = m.n_embd, m.n_head, m.n_kv_head, m.n_embd // m.n_head
  rules = [Rule(("model.embed_tokens.weight",), ("wte", "embedding"), _same, _one(_same))]

  def proj(names, path, heads):
    """q/k/v_proj (heads x D, C) each -> one kernel (C, len(names), heads, D) (or (C, heads, D)
    for one name), and their biases (heads x D,) -> (len(names), heads, D)."""
    def join(*ws):
      return np.stack([w.T.reshape(C, heads, D) for w in ws], axis=1).reshape(
          (C,) + ((len(ws),) if len(ws) > 1 else ()) + (heads, D))

    def split(k):
      k = k.reshape(C, len(names), heads * D)
      return tuple(_t(k[:, j]) for j in range(len(names)))
    out = [Rule(tuple(n + ".weight" for n in names), path + ("kernel",), join, split)]
    if m.use_bias:
      out.append(Rule(tuple(n + ".bias" for n in names), path + ("bias",),
                      lambda *bs: np.stack(bs).reshape(
                          ((len(bs),) if len(bs) > 1 else ()) + (heads, D)),
                      lambda b: tuple(b.reshape(len(names), heads * D))))
    return out

  for i in range(m.n_layer):
    hf, ours = f"model.layers.{i}.", (f"h_{i}",)
    a = hf + "self_attn."
    rules += _norm_rules(m, hf + "input_layernorm", ours + ("ln_attn",))
    if K == H:  # one fused projection (attention.py)
      rules += proj((a + "q_proj", a + "k_proj", a + "v_proj"), ours + ("attn", "qkv"), H)
    else:
      rules += proj((a + "q_proj",), ours + ("attn", "query"), H)
      rules += proj((a + "k_proj", a + "v_proj"), ours + ("attn", "kv"), K)
    rules.append(Rule((a + "o_proj.weight",), ours + ("attn", "out", "kernel"),
                      lambda w: w.T.reshape(H, D, C), _one(lambda k: _t(k.reshape(H * D, C)))))
    if m.use_bias:
      rules.append(Rule((a + "o_proj.bias",), ours + ("attn", "out", "bias"), _same, _one(_same)))
    rules += _norm_rules(m, hf + "post_attention_layernorm", ours + ("ln_ffn",))
    for hf_name, name in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "proj")):
      rules.append(Rule((hf + f"mlp.{hf_name}.weight",), ours + ("ffn", name, "kernel"), _t,
                        _one(_t)))
      if m.use_bias:
        rules.append(Rule((hf + f"mlp.{hf_name}.bias",), ours + ("ffn", name, "bias"), _same,
                          _one(_same)))
  rules += _norm_rules(m, "model.norm", ("ln_f",))
  if not m.tie_embeddings:
    rules.append(Rule(("lm_head.weight",), ("head", "kernel"), _t, _one(_t)))
  return rules


def mistral_model_fields(hf: dict) -> dict:
  """Llama's fields, and its sliding window over every layer (model.attn_window; none: 0)."""
  return {**llama_model_fields(hf), "attn_window": hf.get("sliding_window") or 0}


def mistral_config(m: ModelConfig, block_size: int) -> dict:
  return {**llama_config(m, block_size), "architectures": ["MistralForCausalLM"],
          "model_type": "mistral", "sliding_window": m.attn_window}


class Allowed(NamedTuple):
  """Layout.requires' values when no list names them: `what` says them, `ok` tests one."""
  what: str
  ok: Callable


# --- MixtralForCausalLM, Qwen3MoeForCausalLM: Llama's attention, a mixture of experts' FFN -------

def _moe_fields(hf: dict, n_experts: int) -> dict:
  """The router and experts' fields common to Mixtral and Qwen3-MoE; a router llm-jax lacks (a
  scoring function other than softmax, routing noise) is refused."""
  _hf_require(hf, "scoring_func", lambda v: v == "softmax", "'softmax' (llm-jax's Mixtral and "
              "Qwen3-MoE routers; its sigmoid router has no Hugging Face layout here)", "softmax")
  _hf_require(hf, "router_jitter_noise", lambda v: not v, "0 (no routing noise)", 0.0)
  _hf_require(hf, "num_experts_per_tok", lambda v: 1 <= v <= n_experts,
              f"1 to the {n_experts} experts", 2)
  for key in ("sliding_window", "use_sliding_window"):
    _hf_require(hf, key, lambda v: not v, "null (llm-jax attends over the whole context)", None)
  return {"moe_experts": n_experts, "moe_top_k": hf.get("num_experts_per_tok", 2),
          "moe_router": "softmax", "moe_shared_experts": 0, "moe_every": 1, "moe_first_dense": 0}


def mixtral_model_fields(hf: dict) -> dict:
  n = hf.get("num_local_experts", 8)
  return {**llama_model_fields(hf), **_moe_fields(hf, n),
          "moe_expert_hidden": hf["intermediate_size"], "moe_renormalize": True}


def qwen3_moe_model_fields(hf: dict) -> dict:
  n = hf.get("num_local_experts") or hf.get("num_experts", 128)
  _hf_require(hf, "decoder_sparse_step", lambda v: v == 1, "1 (every layer sparse)", 1)
  _hf_require(hf, "mlp_only_layers", lambda v: not v, "[] (every layer sparse)", [])
  return {**llama_model_fields(hf), **_moe_fields(hf, n), "qk_norm": True,
          "moe_expert_hidden": hf["moe_intermediate_size"],
          "moe_renormalize": bool(hf.get("norm_topk_prob", False))}


def mixtral_config(m: ModelConfig, block_size: int) -> dict:
  hf = llama_config(m, block_size)
  for key in ("attention_bias", "mlp_bias"):
    del hf[key]
  return {**hf, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
          "intermediate_size": m.moe_expert_hidden, "num_local_experts": m.moe_experts,
          "num_experts_per_tok": m.moe_top_k, "router_jitter_noise": 0.0, "sliding_window": None}


def qwen3_moe_config(m: ModelConfig, block_size: int) -> dict:
  hf = llama_config(m, block_size)
  del hf["mlp_bias"]
  return {**hf, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
          "intermediate_size": m.ffn_hidden, "moe_intermediate_size": m.moe_expert_hidden,
          "num_experts": m.moe_experts, "num_experts_per_tok": m.moe_top_k,
          "norm_topk_prob": m.moe_renormalize, "decoder_sparse_step": 1, "mlp_only_layers": [],
          "use_sliding_window": False, "sliding_window": None}


def _no_balancing_bias(b):
  """The balancing bias (models/moe.py) has no Hugging Face tensor: only a zero one exports."""
  if np.any(b != 0):
    raise UserError("this run's experts have a non-zero balancing bias (train.moe_bias_rate): "
                    "Mixtral and Qwen3-MoE choose experts without one, so their logits would "
                    "differ; export a run trained with train.moe_bias_rate=0")
  return ()


def moe_rules(block: str, names: dict):
  """ModelConfig -> [Rule]: Llama's rules with each layer's FFN the experts': the router
  '{layer}.{block}.gate' (E, C) and expert e's '{layer}.{block}.experts.{e}.{name}' (out, in),
  stacked into our (E, in, out) kernels. names: {our projection: the checkpoint's}."""
  def rules(m: ModelConfig) -> list:
    E = m.moe_experts
    out = [r for r in llama_rules(m) if r.path is None or "ffn" not in r.path]
    for i in range(m.n_layer):
      if m.qk_norm:  # Qwen3's: an RMSNorm of head size on each head's queries and keys
        for name in ("q_norm", "k_norm"):
          out.append(Rule((f"model.layers.{i}.self_attn.{name}.weight",),
                          (f"h_{i}", "attn", name, "scale"), _same, _one(_same)))
      hf, ours = f"model.layers.{i}.{block}.", (f"h_{i}", "ffn")
      out.append(Rule((hf + "gate.weight",), ours + ("router", "kernel"), _t, _one(_t)))
      out.append(Rule((), ours + ("bias",), lambda: np.zeros(E, np.float32), _no_balancing_bias))
      for name, hf_name in names.items():
        out.append(Rule(tuple(f"{hf}experts.{e}.{hf_name}.weight" for e in range(E)),
                        ours + (name, "kernel"), lambda *ws: np.stack([w.T for w in ws]),
                        lambda k: tuple(_t(x) for x in k)))
    return out
  return rules


class Layout(NamedTuple):
  model_fields: Callable  # hf config.json -> config.model fields
  hf_config: Callable  # (ModelConfig, block_size) -> config.json fields
  rules: Callable  # ModelConfig -> [Rule]
  # config.model fields an exported run must have: {field: the values the layout takes}
  requires: dict
  # whether the layout has fewer key/value heads than query heads (grouped-query attention)
  grouped_kv: bool
  # prefixes the checkpoint's tensor names may carry (GPT-2's hub files have none)
  prefix: str = ""
  # whether its FFNs are a mixture of experts (config.model.moe_experts > 0)
  moe: bool = False


# the families built by the GPT module, whose parameter tree the rules name: asked of the registry,
# which promises that no code outside models/ tests a family's name
GPT_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.module is GPT)
_COMMON = {"name": GPT_FAMILIES, "norm": ("pre",), "qk_norm": (False,),
           "scale_embeddings": (False,), "scan_layers": (False,),
           # the speedrun switches neither transformers' GPT-2 nor its Llama has (relu2 is GPT-2's
           # 'relu2' activation; zero_init_proj is an init, nothing to write; Mistral below
           # lifts attn_window)
           "attn_window": (0,), "logit_softcap": (0.0,), "value_embeddings": (False,),
           "unet_skips": (False,)}
_MOE_COMMON = {**_COMMON, "pos": ("rope",), "norm_type": ("rmsnorm",), "activation": ("swiglu",),
               "use_bias": (False,), "moe_router": ("softmax",), "moe_renormalize": (True,),
               "moe_shared_experts": (0,), "moe_every": (1,), "moe_first_dense": (0,)}
LAYOUTS = {
    "GPT2LMHeadModel": Layout(
        gpt2_model_fields, gpt2_config, gpt2_rules,
        {**_COMMON, "pos": ("learned",), "norm_type": ("layernorm",),
         "activation": tuple(sorted(set(GPT2_ACTIVATIONS.values())))},
        grouped_kv=False, prefix="transformer."),
    "LlamaForCausalLM": Layout(
        llama_model_fields, llama_config, llama_rules,
        {**_COMMON, "pos": ("rope",), "norm_type": ("rmsnorm",), "activation": ("swiglu",)},
        grouped_kv=True),
    # Llama's tensors with a sliding window in every layer (transformers' Mistral: a key at
    # distance < sliding_window from the query is seen, as model.attn_window)
    "MistralForCausalLM": Layout(
        mistral_model_fields, mistral_config, llama_rules,
        {**_COMMON, "pos": ("rope",), "norm_type": ("rmsnorm",), "activation": ("swiglu",),
         "attn_window": Allowed("a positive window", lambda w: w > 0),
         "window_pattern": Allowed("'' or 'L's only (every layer local)",
                                   lambda p: set(p) <= {"L"})},
        grouped_kv=True),
    "MixtralForCausalLM": Layout(
        mixtral_model_fields, mixtral_config,
        moe_rules("block_sparse_moe", {"gate": "w1", "up": "w3", "proj": "w2"}), _MOE_COMMON,
        grouped_kv=True, moe=True),
    "Qwen3MoeForCausalLM": Layout(
        qwen3_moe_model_fields, qwen3_moe_config,
        moe_rules("mlp", {"gate": "gate_proj", "up": "up_proj", "proj": "down_proj"}),
        {**_MOE_COMMON, "qk_norm": (True,), "moe_renormalize": (True, False)},
        grouped_kv=True, moe=True),
}


def _hf_require(hf, key, ok, want, default):
  if not ok(hf.get(key, default)):
    raise UserError(f"the checkpoint's config.json has {key}={hf.get(key)!r}, which llm-jax's "
                    f"model does not have: it converts checkpoints with {key} = {want}")


# --- reading and writing --------------------------------------------------------------------------

def read_hf_dir(src: str) -> tuple[dict, dict]:
  """(config.json, {tensor name: float32 array}) of a Hugging Face model directory."""
  src = os.path.abspath(src)
  if not os.path.isdir(src):
    raise UserError(f"--from={src} is not a directory: pass a Hugging Face model directory "
                    f"(config.json + model.safetensors, as save_pretrained writes it)")
  try:
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
      hf = json.load(f)
  except FileNotFoundError:
    raise UserError(f"--from={src} has no config.json: pass a Hugging Face model "
                    f"directory") from None
  except ValueError as e:
    raise UserError(f"{src}/config.json is not JSON ({e}): restore the file") from None
  index = os.path.join(src, SAFETENSORS_INDEX)
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.isfile(os.path.join(src, SAFETENSORS)):
    files = [SAFETENSORS]
  else:
    raise UserError(f"--from={src} has no {SAFETENSORS}: llm-jax reads safetensors only (never "
                    f"pickle); rewrite a pytorch_model.bin with transformers' "
                    f"model.save_pretrained(dir)")
  from safetensors import safe_open  # noqa: PLC0415 -- the hf extra: only convert needs it
  tensors = {}
  for name in files:
    with safe_open(os.path.join(src, name), framework="flax") as f:
      for key in f.keys():
        tensors[key] = np.asarray(f.get_tensor(key), np.float32)
  return hf, tensors


def _architecture(hf: dict) -> str:
  archs = hf.get("architectures") or []
  arch = next((a for a in archs if a in LAYOUTS), None)
  if arch is None:
    raise UserError(f"the checkpoint's architectures={archs!r} is not one llm-jax converts: use a "
                    f"{' or '.join(LAYOUTS)} checkpoint")
  return arch


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def params_from_hf(arch: str, m: ModelConfig, tensors: dict, like) -> dict:
  """Our params (numpy) from the checkpoint's tensors; `like`: the model's parameter shapes.
  Every tensor must be used, and every parameter filled, with its shape."""
  layout = LAYOUTS[arch]
  tensors = {k.removeprefix(layout.prefix): v for k, v in tensors.items()
             # GPT-2's causal-mask buffers, in some older files: not parameters
             if not k.endswith((".attn.bias", ".attn.masked_bias")) or v.ndim != 4}
  params, used = {}, set()
  for rule in layout.rules(m):
    missing = [k for k in rule.hf if k not in tensors]
    if missing:
      raise UserError(f"the checkpoint has no tensor {missing[0]!r}, which its config.json "
                      f"implies: it is not a complete {arch} of this shape")
    value = rule.to_ours(*(tensors[k] for k in rule.hf))
    want = _get(like, rule.path).shape
    if value.shape != want:
      raise UserError(f"the checkpoint's {', '.join(rule.hf)} has shape "
                      f"{tuple(tensors[rule.hf[0]].shape)}, not the {want} its config.json implies")
    _set(params, rule.path, value.astype(np.float32))
    used.update(rule.hf)
  extra = sorted(set(tensors) - used)
  if extra:
    raise UserError(f"the checkpoint has tensors llm-jax's model has no place for ({extra[0]!r} "
                    f"and {len(extra) - 1} more): it is not a plain {arch}")
  return params


def _tokenizer_spec(src, workdir, hf, tokenizer_flag):
  if tokenizer_flag:
    if tokenizer_flag == "char" or tokenizer_flag.startswith("bpe:train:"):
      raise UserError(f"--tokenizer={tokenizer_flag} is made from a corpus, and a checkpoint's "
                      f"ids are fixed: pass hf:<tokenizer.json>, tiktoken:<encoding> or "
                      f"bpe:<rank file>")
    return tokenizer_flag
  path = os.path.join(src, "tokenizer.json")
  if os.path.isfile(path):
    dest = os.path.join(workdir, HF_TOKENIZER_FILE)
    shutil.copyfile(path, dest)
    return f"hf:{dest}"
  if hf["vocab_size"] == 50257:  # GPT-2's own vocabulary
    return "tiktoken:gpt2"
  raise UserError(f"--from={src} has no tokenizer.json, and its vocabulary ({hf['vocab_size']}) "
                  f"is not GPT-2's: pass the tokenizer with --tokenizer=hf:<tokenizer.json> (or "
                  f"tiktoken:<encoding>, bpe:<rank file>)")


def convert(src: str, workdir: str, tokenizer: str = "") -> dict:
  """Writes a run directory in `workdir` from the Hugging Face checkpoint in `src`. Returns
  {'architecture', 'params', 'tokenizer', 'workdir'}."""
  hf, tensors = read_hf_dir(src)
  src, workdir = os.path.abspath(src), os.path.abspath(workdir)
  arch = _architecture(hf)
  layout = LAYOUTS[arch]
  if os.path.isdir(os.path.join(workdir, "checkpoints")) or os.path.isfile(
      os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    raise UserError(f"--workdir={workdir} already holds a run: convert into a fresh --workdir")
  config = default_config()
  config.model.update(name=GPT_FAMILIES[0], **layout.model_fields(hf))
  workdir_lib.check_writable(workdir)
  config.data.tokenizer = _tokenizer_spec(src, workdir, hf, tokenizer)
  validate(config)
  try:
    tok = make_tokenizer(config.data.tokenizer, "", config.data.data_dir)
  except UserError as e:
    raise UserError(f"{e}; or pass the checkpoint's tokenizer with --tokenizer=hf:<tokenizer.json>"
                    ) from None
  if tok.vocab_size > config.model.vocab_size:
    raise UserError(f"the tokenizer {config.data.tokenizer} has {tok.vocab_size} tokens, more than "
                    f"the checkpoint's vocab_size={config.model.vocab_size}: pass its own "
                    f"tokenizer with --tokenizer=")
  template, specials = read_template(src)
  if template is not None and isinstance(tok, HFTokenizer):  # the run renders with it
    tok = ChatTokenizer(tok, template, specials)
  model = build_model(config.model, tok.vocab_size)
  like = jax.eval_shape(lambda: init_params(model, config.model, jax.random.key(0)))
  params = params_from_hf(arch, model.cfg, tensors, like)
  state = create_state(params, make_optimizer(config.train))
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints)
  checkpoint.save(manager, jax.device_get(state), workdir_lib.checkpoint_meta())
  manager.wait_until_finished()
  manager.close()
  workdir_lib.write_run_files(workdir, config, tok)
  write_json(os.path.join(workdir, HF_CONFIG_FILE), {**hf, "llm_jax_converted_from": src})
  n = sum(x.size for x in jax.tree.leaves(params))
  return {"architecture": arch, "params": n, "tokenizer": config.data.tokenizer,
          "workdir": workdir}


def layout_of(model_config) -> str:
  """The architecture a run's config.model exports to, or a UserError naming the field."""
  m, why = model_config, {}
  for arch, layout in LAYOUTS.items():
    bad = [(f, vs) for f, vs in layout.requires.items()
           if not (vs.ok(m[f]) if isinstance(vs, Allowed) else m[f] in vs)]
    if not layout.grouped_kv and m.n_kv_head not in (0, m.n_head):
      bad.append(("n_kv_head", (0,)))
    if layout.moe != (m.moe_experts > 0):
      bad.insert(0, ("moe_experts", ("a positive number",) if layout.moe else (0,)))
    if not bad:
      return arch
    why[arch] = bad[0]
  raise UserError("this run's model has no Hugging Face layout llm-jax writes: " + "; ".join(
      f"{arch} needs config.model.{f}=" + (vs.what if isinstance(vs, Allowed) else
                                           " or ".join(map(repr, vs))) + f" (the run has {m[f]!r})"
      for arch, (f, vs) in why.items()))


def export(workdir: str, out: str, step: int | None = None) -> dict:
  """Writes the run's parameters at `step` (default: the latest) as a Hugging Face checkpoint
  in `out`: config.json, model.safetensors, and tokenizer.json where the run's tokenizer is one."""
  from safetensors.numpy import save_file  # noqa: PLC0415 -- the hf extra
  config, tok, model, params, step = workdir_lib.load_run(workdir, step,
                                                          default_config().to_dict())
  arch = layout_of(config.model)
  layout, m = LAYOUTS[arch], model.cfg
  out = os.path.abspath(out)
  if os.path.isfile(os.path.join(out, "config.json")):
    raise UserError(f"--to={out} already holds a model (config.json): export into a fresh "
                    f"directory")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f"--to={out} cannot be created ({e.strerror or e}): pick a directory you can "
                    f"write to") from None
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  tensors = {}
  for rule in layout.rules(m):
    arrays = rule.to_hf() if rule.path is None else rule.to_hf(_get(params, rule.path))
    for name, a in zip(rule.hf, arrays):
      tensors[layout.prefix + name] = np.ascontiguousarray(a, np.float32)
  base = {}
  base_path = os.path.join(os.path.abspath(workdir), HF_CONFIG_FILE)
  if os.path.isfile(base_path):
    with open(base_path, encoding="utf-8") as f:
      base = json.load(f)
  if base.get("architectures") != [arch]:  # the run was changed, or trained here
    base = {}
  hf = {k: v for k, v in base.items() if k != "llm_jax_converted_from"}
  if not base and getattr(tok, "source", {}).get("spec") == "tiktoken:gpt2":
    hf.update(bos_token_id=50256, eos_token_id=50256)
  elif not base:  # no such token: stated, else transformers' GPT-2 defaults name id 50256
    hf.update(bos_token_id=None, eos_token_id=None)
  hf.update(layout.hf_config(m, config.model.block_size), dtype="float32")
  wrote_tokenizer = isinstance(tok, HFTokenizer)
  if wrote_tokenizer:
    shutil.copyfile(tok.path, os.path.join(out, "tokenizer.json"))
  template = isinstance(tok, ChatTokenizer) and _export_chat(tok, out, config.model.block_size)
  wrote_tokenizer = wrote_tokenizer or template
  if template:  # transformers' generate stops at the template's end token
    hf["eos_token_id"] = tok.end_id
  spec = "tokenizer.json" if wrote_tokenizer else tok.to_dict().get("spec", tok.kind)
  save_file(tensors, os.path.join(out, SAFETENSORS), metadata={"format": "pt"})
  write_json(os.path.join(out, "config.json"), hf)
  return {"architecture": arch, "step": step, "tensors": len(tensors), "out": out,
          "tokenizer": spec, "chat_template": bool(template)}


def _char_tokenizer_json(chars: str, normalization: str):
  """A `tokenizers` Tokenizer with the char tokenizer's ids: one token per character, after the
  run's Unicode normalization (data.normalize; 'auto' is NFC for char runs)."""
  tokenizers = _hf_tokenizers()
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({c: i for i, c in enumerate(chars)},
                                                         unk_token=chars[0]))
  if normalization != "none":
    tok.normalizer = getattr(tokenizers.normalizers, normalization)()
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), "isolated")
  tok.decoder = tokenizers.decoders.Fuse()
  return tok


def _export_chat(tok, out: str, block_size: int) -> bool:
  """A chat run's tokenizer.json (with the template's special tokens at their ids) and
  tokenizer_config.json (its chat_template, eos_token): transformers' AutoTokenizer and
  apply_chat_template then render as llm-jax does. False (nothing written) for a base tokenizer
  that has no tokenizers file here (tiktoken, BPE rank files)."""
  base, path = tok.base, os.path.join(out, "tokenizer.json")
  if tok.template is not None:  # a converted checkpoint's: its file holds the specials already
    template, specials = tok.template, tok.special_tokens
  else:
    if isinstance(base, HFTokenizer) and base.normalization == "none":
      hf_tok = _hf_tokenizers().Tokenizer.from_file(str(base.path))
    elif isinstance(base, CharTokenizer):
      hf_tok = _char_tokenizer_json(base.chars, base.normalization)
    else:
      return False
    names = sorted(tok.special_ids, key=tok.special_ids.get)
    hf_tok.add_special_tokens(names)
    if any(hf_tok.token_to_id(n) != tok.special_ids[n] for n in names):
      raise UserError("the run's tokenizer.json cannot take the chat template's special tokens "
                      "at the run's ids: export a run without the chat template")
    hf_tok.save(path)
    template, specials = LLM_JAX_TEMPLATE, {"eos_token": "<|end|>"}
  write_json(os.path.join(out, "tokenizer_config.json"), {
      "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
      "model_max_length": block_size, "clean_up_tokenization_spaces": False, **specials})
  return True
