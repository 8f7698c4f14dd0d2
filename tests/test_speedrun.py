"""The speedrun switches (docs/speedrun.md): each one's identity with the model or optimizer
without it, what it must guarantee (windows, caps, document masks, BOS rows, the ring-buffer
cache), the mesh agreeing with one device, and one line for each bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from llm_jax.config import default_config, validate
from llm_jax.data import packing
from llm_jax.errors import UserError
from llm_jax.models import build_model, init_params
from llm_jax.models.layers import ACTIVATIONS
from llm_jax.training.optimizer import lr_group_labels, make_optimizer

V, T = 40, 16


def model_config(**switches):
  c = default_config()
  c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=T, dtype="float32", pos="rope")
  c.model.update(switches)
  validate(c)
  return c.model


def model_and_params(seed=0, **switches):
  m = model_config(**switches)
  model = build_model(m, V)
  return model, init_params(model, m, jax.random.key(seed))


TOKENS = jax.random.randint(jax.random.key(1), (2, T), 0, V)


def logits(model, params, tokens=TOKENS, **kw):
  """The model's logits, as one compiled program (a tiny model compiles faster than it runs
  op by op)."""
  return np.asarray(jax.jit(lambda p, t, kw: model.apply({"params": p}, t, **kw))(
      params, tokens, kw))


def merged(params, base):
  """params with every leaf that `base` also has taken from base."""
  if not isinstance(params, dict):
    return base
  return {k: merged(v, base[k]) if k in base else v for k, v in params.items()}


@pytest.mark.parametrize("scan", [False, True])
def test_a_window_of_at_least_block_size_is_full_causal_attention_bitwise(scan):
  model, params = model_and_params(scan_layers=scan)
  full = logits(model, params)
  for window, pattern in ((T, ""), (4 * T, "LG")):
    windowed, _ = model_and_params(scan_layers=scan, attn_window=window, window_pattern=pattern)
    assert np.array_equal(logits(windowed, params), full)
  # and a short window is another model: the last position sees 2 tokens, not 16
  short, _ = model_and_params(scan_layers=scan, attn_window=2)
  assert not np.allclose(logits(short, params)[:, -1], full[:, -1], atol=1e-4)
  assert np.allclose(logits(short, params)[:, :2], full[:, :2], atol=1e-6)  # within the window


def test_relu2_is_relu_squared():
  x = jnp.linspace(-3, 3, 61)
  assert np.array_equal(ACTIVATIONS["relu2"](x), jnp.maximum(x, 0) ** 2)


def test_softcap_with_a_huge_cap_is_no_cap_and_a_cap_is_never_exceeded():
  model, params = model_and_params()
  plain = logits(model, params)
  huge, _ = model_and_params(logit_softcap=1e6)
  assert np.allclose(logits(huge, params), plain, atol=1e-6, rtol=0)
  cap = float(np.abs(plain).max()) / 4  # a quarter of the largest logit: many are capped
  capped, _ = model_and_params(logit_softcap=cap)
  out = logits(capped, params)
  assert np.abs(out).max() <= cap and np.abs(out).max() > 0.9 * cap
  assert np.allclose(out, cap * np.tanh(plain / cap), atol=1e-6)


def test_zero_init_proj_starts_every_block_as_the_identity():
  model, params = model_and_params(zero_init_proj=True)
  for i in range(2):
    assert not np.any(params[f"h_{i}"]["attn"]["out"]["kernel"])
    assert not np.any(params[f"h_{i}"]["ffn"]["proj"]["kernel"])
  assert np.any(params["h_0"]["attn"]["qkv"]["kernel"])


def test_value_embeddings_and_unet_skips_at_zero_weights_are_the_baseline_bitwise():
  base, base_params = model_and_params()
  expected = logits(base, base_params)
  model, params = model_and_params(value_embeddings=True, unet_skips=True)
  assert sorted(k for k in params if k.startswith("ve_")) == ["ve_0"]
  # the baseline's parameters, the extra tables and mixing weights beside them
  params = merged(params, base_params)
  assert not np.allclose(logits(model, params), expected, atol=1e-4)  # at init they mix
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if path[-1].key in ("ve_lambda", "skip_weights") else x,
      params)
  assert np.array_equal(logits(model, params), expected)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_group_rates_equal_to_the_main_rate_are_todays_optimizer_bitwise(optimizer):
  c = default_config().train
  c.update(optimizer=optimizer, learning_rate=3e-3, warmup_steps=1, max_steps=10)
  m = model_config(tie_embeddings=False, value_embeddings=True)
  params = init_params(build_model(m, V), m, jax.random.key(0))
  labels = lr_group_labels(params)
  assert labels["head"]["kernel"] == "head" and labels["wte"]["embedding"] == "embed"
  assert labels["ve_0"]["embedding"] == "embed" and labels["h_0"]["attn"]["qkv"]["kernel"] == "main"
  grads = [jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i), p.shape), params)
           for i in range(3)]

  def run(**rates):
    cfg = c.copy_and_resolve_references()
    cfg.update(rates)
    tx = make_optimizer(cfg)

    @jax.jit
    def three_updates(p):
      state = tx.init(p)
      for g in grads:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
      return p
    return three_updates(params)

  today = run()
  same = run(embed_lr=3e-3, head_lr=3e-3)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), today, same))
  # a group's own rate moves that group alone (the clipping's global norm is the gradients')
  fast = run(embed_lr=3e-2)
  assert not np.array_equal(fast["wte"]["embedding"], today["wte"]["embedding"])
  assert np.array_equal(fast["head"]["kernel"], today["head"]["kernel"])
  assert np.array_equal(fast["h_1"]["attn"]["qkv"]["kernel"], today["h_1"]["attn"]["qkv"]["kernel"])


# ------------------------------------------------------------------------------ packing

def test_doc_mask_on_a_row_of_one_document_is_none():
  model, params = model_and_params(attn_window=5)
  seg = np.zeros((2, T), np.int32)
  packed = logits(model, params, positions_BT=jnp.asarray(packing.positions(seg)),
                  mask_BTT=jnp.asarray(packing.document_mask(seg)))
  assert np.array_equal(packed, logits(model, params))


def test_with_doc_mask_a_document_changes_no_other_documents_logits():
  """A packed row of three documents (lengths 5, 6, 5): the middle one's tokens replaced, the
  first and last documents' logits stay; a plain causal read of the row would change them."""
  model, params = model_and_params(attn_window=8, window_pattern="LG")
  seg = np.repeat(np.arange(3), [5, 6, 5])[None].repeat(2, 0).astype(np.int32)
  kw = dict(positions_BT=jnp.asarray(packing.positions(seg)),
            mask_BTT=jnp.asarray(packing.document_mask(seg)))
  assert packing.positions(seg)[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]
  other = TOKENS.at[:, 5:11].set((TOKENS[:, 5:11] + 7) % V)
  a, b = logits(model, params, **kw), logits(model, params, other, **kw)
  outside = seg[0] != 1
  assert np.allclose(a[:, outside], b[:, outside], atol=1e-6, rtol=0)
  assert not np.allclose(a[:, ~outside], b[:, ~outside], atol=1e-3)
  plain_a, plain_b = logits(model, params), logits(model, params, other)
  assert not np.allclose(plain_a[:, 11:], plain_b[:, 11:], atol=1e-3)


def synthetic_docs(n, seed=0, bos=0):
  rng = np.random.default_rng(seed)
  lengths = np.minimum(rng.geometric(1 / 8, n), 40)
  return [np.concatenate([[bos], rng.integers(1, V, k - 1)]).astype(np.int32) if k > 1
          else np.array([bos], np.int32) for k in lengths]


def test_every_bos_row_starts_at_a_document_and_little_is_discarded():
  docs = synthetic_docs(3000)
  row_len = T + 1
  packed = packing.best_fit_rows(iter(docs), 300, row_len)
  assert packed.rows.shape == packed.segments.shape == (300, row_len)
  assert np.all(packed.rows[:, 0] == 0) and np.all(packed.segments[:, 0] == 0)
  by_start = {}
  for d in docs:
    by_start.setdefault(tuple(d[:2].tolist()), []).append(d)
  for row, seg in zip(packed.rows, packed.segments):
    pieces = [row[seg == s] for s in np.unique(seg)]
    for i, piece in enumerate(pieces):  # each a document, the last one perhaps cropped
      assert piece[0] == 0 and np.count_nonzero(piece == 0) == 1
      whole = len(piece) < row_len and i < len(pieces) - 1
      candidates = by_start.get(tuple(piece[:2].tolist()), [])
      assert any((len(d) == len(piece) if whole else len(d) >= len(piece)) and
                 np.array_equal(d[:len(piece)], piece) for d in candidates)
  # what bos alignment must lose: the part of each document past one row (about a tenth here);
  # best-fit loses little more (measured 0.109 against 0.102 over 1000 rows)
  lengths = np.array([len(d) for d in docs])
  must = np.maximum(lengths - row_len, 0).sum() / lengths.sum()
  frac = packed.discarded_tokens / packed.used_tokens
  assert 0.5 * must < frac < must + 0.03, (frac, must)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Sentences as documents, and one long text as one document, prepared with the char
  tokenizer."""
  from llm_jax.data import prepare as prep
  from conftest import TOY_TEXT
  tmp = tmp_path_factory.mktemp("speedrun_prepared")
  with open(tmp / "docs.jsonl", "w") as f:
    for s in TOY_TEXT.split("."):
      if s.strip():
        f.write(json.dumps({"text": s.strip() + "."}) + "\n")
  (tmp / "one_src").mkdir()  # the first file is the val split, the second the one train document
  (tmp / "one_src" / "a.txt").write_text(TOY_TEXT[:200])
  (tmp / "one_src" / "b.txt").write_text(TOY_TEXT)
  for name, src, val in (("docs", tmp / "docs.jsonl", "0.1"),
                         ("one", tmp / "one_src" / "*.txt", "1")):
    prep.prepare(str(src), "char", str(tmp / name), val=val, shard_tokens=97, workers=0,
                 progress=False)
  return tmp


def test_prepared_bos_and_doc_mask_batches(prepared):
  from llm_jax.data.prepared import PreparedData
  data = PreparedData(prepared / "docs", T, packing="doc_mask")
  b = data.get_batch("train", (2, 4), seed=0, step=3)
  assert b["inputs"].shape == b["segments"].shape == b["positions"].shape == (2, 4, T)
  assert np.all(b["inputs"][..., 0] == data.bos_id) and np.all(b["positions"][..., 0] == 0)
  assert np.array_equal(b["targets"][..., :-1], b["inputs"][..., 1:])
  starts = b["positions"] == 0  # each document's first input is its BOS
  assert np.array_equal(starts, b["inputs"] == data.bos_id)
  again = PreparedData(prepared / "docs", T, packing="doc_mask").get_batch("train", (2, 4), 0, 3)
  assert all(np.array_equal(b[k], again[k]) for k in b)  # a function of (seed, step)
  assert 0 <= data.discarded_fraction() < 0.5



# ------------------------------------------------------------------- the windowed KV cache

def test_sliding_window_cached_decoding_past_block_size_is_the_windowed_forward():
  """Greedy decoding through the ring-buffer cache, from a prompt longer than block_size (its
  first block_size tokens prefilled, the rest fed one at a time) to 2.5 x block_size, equals
  greedy decoding by the uncached forward over the whole sequence, its window mask its only
  limit (a global layer's window: max_len = block_size). (With scan_layers the windows are a
  scanned array: the first test's full forward checks them.)"""
  from llm_jax import decoding
  # the other switches ride along: they must keep the cache exact too
  model, params = model_and_params(seed=3, attn_window=5, window_pattern="LG", activation="relu2",
                                   logit_softcap=30.0, value_embeddings=True, unet_skips=True)
  # larger weights than the init's, so that the greedy tokens vary
  params = jax.tree.map(lambda x: x * 3 if x.ndim >= 2 else x, params)
  P, N = T + 4, 40
  prompt = jax.random.randint(jax.random.key(5), (2, P), 0, V)
  cached = decoding.generate(model, params, prompt, jax.random.key(0), max_new_tokens=N - P,
                             block_size=T, greedy=True)
  forward = jax.jit(lambda seq: model.apply({"params": params}, seq))
  seq = np.zeros((2, N), np.int32)
  seq[:, :P] = prompt
  for n in range(P, N):  # the logits at n - 1 see tokens up to n - 1 only (causal)
    seq[:, n] = np.argmax(np.asarray(forward(jnp.asarray(seq)))[:, n - 1], axis=-1)
  assert np.array_equal(cached, seq)
  # greedy decoding of a random model repeats itself: the logits of a sequence of varied tokens,
  # fed through the ring one at a time, are the forward's at every position too
  tokens = jax.random.randint(jax.random.key(6), (2, N), 0, V)
  cache = decoding.init_cache(model, 2, T)
  step = jax.jit(lambda tok, cache: model.apply({"params": params, "cache": cache}, tok,
                                                 decode=True, mutable=["cache"]))
  out, cache = step(tokens[:, :T], cache)
  rows = [np.asarray(out)]
  for n in range(T, N):
    out, cache = step(tokens[:, n:n + 1], cache["cache"] if "cache" in cache else cache)
    rows.append(np.asarray(out))
  assert np.allclose(np.concatenate(rows, axis=1), forward(tokens), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ the mesh and the loop

def test_every_switch_on_a_mesh_trains_as_one_device(prepared, tmp_path):
  """Every switch at once (doc_mask rows of a prepared dataset, local/global windows, relu2,
  soft-capping, zero-initialized projections, value embeddings, U-net skips, embedding and head
  rates over Muon) trained on a (data=2, fsdp=2, tensor=2) mesh of simulated devices: the
  losses of one device to 1e-5, and they go down."""
  from llm_jax.training.loop import train_and_evaluate
  from test_parallel import assert_close, read_metrics
  assert jax.device_count() == 8
  c = tiny_config("unused", batch_size=8, max_steps=8, lr_decay_steps=8, eval_interval=4,
                  log_interval=1, checkpoint_every=8, optimizer="muon", learning_rate=0.02,
                  embed_lr=0.05, head_lr=0.005)
  c.data.update(corpus="prepared", path=str(prepared / "docs"), packing="doc_mask")
  c.model.update(n_layer=2, n_head=4, n_embd=32, pos="rope", attn_window=4, window_pattern="LG",
                 activation="relu2", logit_softcap=5.0, zero_init_proj=True,
                 value_embeddings=True, unet_skips=True, tie_embeddings=False)
  runs = {}
  for name, mesh in (("one", None), ("mesh", dict(data=2, fsdp=2, tensor=2))):
    cfg = c.copy_and_resolve_references()
    if mesh:
      cfg.parallel = "auto"
      cfg.mesh.update(mesh)
    train_and_evaluate(cfg, str(tmp_path / name))
    runs[name] = read_metrics(tmp_path / name)
  assert_close(runs["mesh"][0], runs["one"][0])
  assert_close(runs["mesh"][1], runs["one"][1])
  assert runs["one"][0][8] < runs["one"][0][1] - 0.3


# ------------------------------------------------------------------------------ bad inputs

def test_export_refuses_the_switches_gpt2_and_llama_cannot_hold_in_one_line():
  from llm_jax import convert
  assert convert.layout_of(model_config(pos="learned", zero_init_proj=True,
                                        activation="relu2")) == "GPT2LMHeadModel"
  windowed = model_config(norm_type="rmsnorm", activation="swiglu", attn_window=8)
  assert convert.layout_of(windowed) == "MistralForCausalLM"
  windowed.window_pattern = "LG"
  with pytest.raises(UserError, match="MistralForCausalLM needs config.model.window_pattern="):
    convert.layout_of(windowed)
  for switch, value in (("attn_window", 8), ("logit_softcap", 15.0), ("value_embeddings", True),
                        ("unet_skips", True)):
    with pytest.raises(UserError, match=f"GPT2LMHeadModel needs config.model.{switch}=") as e:
      convert.layout_of(model_config(pos="learned", **{switch: value}))
    assert "\n" not in str(e.value)


def test_transformers_families_hold_relu2_and_a_sliding_window(tmp_path):
  """transformers' GPT-2 with relu2 converts to activation 'relu2' with its logits; its Mistral
  (a sliding window in every layer) converts with model.attn_window and gives its logits past
  the window, full forward and cached; exported back, the same tensors and window."""
  pytest.importorskip("transformers")
  import transformers
  from safetensors.numpy import load_file
  from llm_jax import convert
  from test_convert import check_logits, gpt2, randomize, save
  hf_gpt2 = gpt2(activation_function="relu2")
  r = convert.convert(save(hf_gpt2, tmp_path / "hf_gpt2"), tmp_path / "run_gpt2")
  assert check_logits(hf_gpt2, r["workdir"]).model.activation == "relu2"
  hf_model = randomize(transformers.MistralForCausalLM(transformers.MistralConfig(
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
      intermediate_size=40, vocab_size=96, max_position_embeddings=24, sliding_window=5,
      rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0, attn_implementation="eager")))
  src = save(hf_model, tmp_path / "hf")
  r = convert.convert(src, tmp_path / "run")
  assert r["architecture"] == "MistralForCausalLM"
  assert check_logits(hf_model, r["workdir"]).model.attn_window == 5
  out = convert.export(r["workdir"], tmp_path / "out")
  assert out["architecture"] == "MistralForCausalLM"
  assert json.loads((tmp_path / "out" / "config.json").read_text())["sliding_window"] == 5
  before, after = load_file(os.path.join(src, "model.safetensors")), load_file(
      os.path.join(out["out"], "model.safetensors"))
  assert sorted(before) == sorted(after)
  assert all(np.array_equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("section, switches, match", [
    ("model", dict(window_pattern="LLGX"), r"model.window_pattern='LLGX' .*unknown letter 'X'"),
    ("model", dict(window_pattern="LLLG"), r"model.attn_window=0 .*has local layers"),
    ("model", dict(name="bigram", value_embeddings=True),
     r"model.value_embeddings=True .*model 'bigram' does not read it"),
    ("model", dict(unet_skips=True, scan_layers=True), r"model.unet_skips=True .*scan_layers"),
    ("data", dict(packing="bos"), r"data.packing='bos' .*prepared"),
    ("train", dict(embed_lr=-1.0), r"train.embed_lr=-1.0"),
    ("train", dict(head_lr=1e-3), r"train.head_lr=0.001 .*tie_embeddings"),
])
def test_bad_switches_are_one_line(section, switches, match):
  c = tiny_config("unused")
  c[section].update(switches)
  with pytest.raises(UserError, match=match) as e:
    validate(c)
  assert "\n" not in str(e.value)


def test_bos_packing_of_a_corpus_without_document_boundaries_is_one_line(prepared):
  from llm_jax.data.prepared import PreparedData
  with pytest.raises(UserError, match=r"data.packing='bos': the train split .* has no document "
                                      r"boundaries") as e:
    PreparedData(prepared / "one", T, packing="bos")
  assert "\n" not in str(e.value)
