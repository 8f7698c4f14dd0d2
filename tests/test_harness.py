"""harness.py: lm-evaluation-harness on llm-jax runs, checked against lm-eval's own HF backend.

A random GPT-2 and a random Llama with grouped-query attention are made with transformers (as
tests/test_convert.py makes them), converted with llm-jax convert, and run through lm-eval twice:
by its HFLM on the transformers model and by llm-jax's JaxLM on the converted run. Local tasks
are written into tmp: a multiple-choice task in HellaSwag's form (a context and four endings,
some contexts longer than the model's context) and a rolling log-likelihood task on passages
longer than it.
"""

import json
import os

import jax
import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"

import transformers  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from test_convert import V, gpt2, llama, save  # noqa: E402

from llm_jax import convert, harness  # noqa: E402
from llm_jax.errors import UserError  # noqa: E402

T = 24  # the tiny models' context (test_convert's n_positions)
N_MC, N_ROLLING = 200, 12


def words(rng, lo, hi):
  return " ".join(f"w{i}" for i in rng.integers(1, V, rng.integers(lo, hi + 1)))


def write_tasks(d):
  """A folder of lm-eval tasks: tiny_mc (HellaSwag's form: ctx, four endings, label),
  tiny_rolling (passages longer than T) and tiny_gen (generation with a stop sequence)."""
  rng = np.random.default_rng(0)
  d.mkdir(parents=True, exist_ok=True)
  with open(d / "tiny_mc.jsonl", "w") as f:
    for _ in range(N_MC):  # contexts of 1..30 words: some are cut from the left
      f.write(json.dumps({"ctx": words(rng, 1, 30), "endings": [words(rng, 1, 4) for _ in range(4)],
                          "label": int(rng.integers(4))}) + "\n")
  with open(d / "tiny_rolling.jsonl", "w") as f:
    for _ in range(N_ROLLING):
      f.write(json.dumps({"text": words(rng, 40, 80)}) + "\n")
  with open(d / "tiny_gen.jsonl", "w") as f:
    for n in [3, 6] * 10:
      f.write(json.dumps({"prompt": words(rng, n, n), "answer": "w1"}) + "\n")
  # datasets' cache in tmp too (never ~/.cache)
  data = lambda name: (f"dataset_path: json\ndataset_kwargs:\n  cache_dir: {d / 'hf_cache'}\n"
                       f"  data_files:\n    test: {d / name}\n")
  (d / "tiny_mc.yaml").write_text(
      "task: tiny_mc\n" + data("tiny_mc.jsonl") +
      "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{ctx}}\"\n"
      "doc_to_target: label\ndoc_to_choice: \"{{endings}}\"\n"
      "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  (d / "tiny_rolling.yaml").write_text(
      "task: tiny_rolling\n" + data("tiny_rolling.jsonl") +
      "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
      "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: word_perplexity\n"
      "  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
  (d / "tiny_gen.yaml").write_text(
      "task: tiny_gen\n" + data("tiny_gen.jsonl") +
      "test_split: test\noutput_type: generate_until\ndoc_to_text: \"{{prompt}}\"\n"
      "doc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n  until: [\"w1\", \"w2\"]\n"
      "  max_gen_toks: 10\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
  return str(d)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
  return write_tasks(tmp_path_factory.mktemp("tasks"))


def hf_tokenizer(d):
  return transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"),
                                              bos_token="w0", eos_token="w0", pad_token="w0")


_PAIRS = {}


def make_pair(name, tmp_path_factory):
  """(transformers model, its lm-eval HFLM, the converted run's JaxLM, the run's workdir), made
  once per module."""
  if name not in _PAIRS:
    d = tmp_path_factory.mktemp(name)
    hf_model = gpt2() if name == "gpt2" else llama(num_key_value_heads=2)
    src = save(hf_model, d / "hf")
    run = convert.convert(src, d / "run")["workdir"]
    hflm = HFLM(pretrained=hf_model, tokenizer=hf_tokenizer(src), batch_size=16, max_length=T,
                device="cpu")
    ours, _ = harness.lm_from_run(run, batch_size=16)
    _PAIRS[name] = hf_model, hflm, ours, run
  return _PAIRS[name]


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def pair(request, tmp_path_factory):
  return make_pair(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
  return make_pair("gpt2", tmp_path_factory)


def samples_by_doc(results, task):
  return {s["doc_id"]: s for s in results["samples"][task]}


def test_scores_equal_lm_eval_hf_backend(pair, tasks_dir):
  """Per-item log-likelihoods agree to 1e-4, acc and acc_norm are identical, and the rolling
  task's bits per byte and perplexities agree to 1e-4 relative."""
  _, hflm, ours, _ = pair
  tasks = ["tiny_mc", "tiny_rolling"]
  ref = harness.evaluate(hflm, tasks, include_path=tasks_dir, log_samples=True)
  got = harness.evaluate(ours, tasks, include_path=tasks_dir, log_samples=True)
  ref_mc, got_mc = samples_by_doc(ref, "tiny_mc"), samples_by_doc(got, "tiny_mc")
  assert len(ref_mc) == N_MC and sorted(ref_mc) == sorted(got_mc)
  ll_ref = np.array([[r[0][0] for r in ref_mc[i]["resps"]] for i in sorted(ref_mc)])
  ll_got = np.array([[r[0][0] for r in got_mc[i]["resps"]] for i in sorted(got_mc)])
  assert ll_ref.shape == (N_MC, 4) and ll_ref.std() > 1.0  # the model tells endings apart
  np.testing.assert_allclose(ll_got, ll_ref, atol=1e-4, rtol=0)
  for i in ref_mc:  # the same greedy flags, and every per-item metric the same
    assert [r[0][1] for r in got_mc[i]["resps"]] == [r[0][1] for r in ref_mc[i]["resps"]]
    assert (got_mc[i]["acc"], got_mc[i]["acc_norm"]) == (ref_mc[i]["acc"], ref_mc[i]["acc_norm"])
  for m in ("acc,none", "acc_norm,none"):
    assert got["results"]["tiny_mc"][m] == ref["results"]["tiny_mc"][m]
  ref_r, got_r = samples_by_doc(ref, "tiny_rolling"), samples_by_doc(got, "tiny_rolling")
  lr = np.array([ref_r[i]["resps"][0][0] for i in sorted(ref_r)])
  lg = np.array([got_r[i]["resps"][0][0] for i in sorted(ref_r)])
  assert len(lr) == N_ROLLING and lr.max() < -100  # several windows per passage
  np.testing.assert_allclose(lg, lr, rtol=1e-5)
  for m in ("bits_per_byte,none", "word_perplexity,none", "byte_perplexity,none"):
    assert got["results"]["tiny_rolling"][m] == pytest.approx(ref["results"]["tiny_rolling"][m],
                                                              rel=1e-4)
  assert len(ours.compiled) <= len(harness.buckets(T))  # a handful of programs, not one a request


def test_generate_until_is_transformers_greedy_continuation(pair):
  """>= 20 prompts with stop sequences: JaxLM (batched, KV cache) gives what HFLM gives, one
  prompt at a time through transformers' generate."""
  hf_model, hflm, ours, _ = pair
  rng = np.random.default_rng(1)
  # three prompt lengths, decoded together by the batched engine
  reqs = [Instance("generate_until", None,
                   (words(rng, n, n), {"until": ["w1", "w2"] if k % 2 else ["w3"],
                                       "max_gen_toks": 8, "do_sample": False}), k)
          for k, n in enumerate([2, 5, 9] * 8)]
  hflm.batch_size_per_gpu = 1  # no left padding on the reference side
  ref = hflm.generate_until(reqs, disable_tqdm=True)
  got = ours.generate_until(reqs)
  assert got == ref
  assert sum(len(t.split()) for t in ref) > 24  # not all empty: the check can fail
  assert any(len(t.split()) < 8 for t in ref)  # and some stopped early


def test_cli_writes_results_json(gpt2_pair, tasks_dir, tmp_path):
  """`llm-jax harness` on a converted run: lm-eval's results dictionary in --output and in
  <workdir>/harness/<step>.json, with results[task]['acc,none']."""
  from test_bad_inputs import run_cli
  _, _, _, run = gpt2_pair
  out = tmp_path / "out.json"
  code, stdout, stderr = run_cli("harness", f"--workdir={run}", "--tasks=tiny_mc,tiny_gen",
                                 f"--include_path={tasks_dir}", "--limit=20", f"--output={out}")
  assert code == 0, stderr
  assert "tiny_mc" in stdout and "acc_norm" in stdout  # lm-eval's table
  results = json.loads(out.read_text())
  with open(os.path.join(run, "harness", "0.json")) as f:
    assert json.load(f) == results
  assert 0 <= results["results"]["tiny_mc"]["acc,none"] <= 1
  assert "exact_match,none" in results["results"]["tiny_gen"]


def test_bad_inputs_are_one_line(gpt2_pair, tasks_dir, tmp_path, monkeypatch):
  import shutil
  import sys
  from llm_jax.config import default_config
  _, _, ours, run = gpt2_pair
  with pytest.raises(UserError, match="unknown lm-eval task 'tiny_mcq'.*did you mean tiny_mc"):
    harness.run_harness(run, "tiny_mcq", include_path=tasks_dir)
  with pytest.raises(UserError, match="--include_path=.*nowhere is not a folder"):
    harness.run_harness(run, "tiny_mc", include_path=str(tmp_path / "nowhere"))
  shutil.copytree(run, tmp_path / "bare", ignore=shutil.ignore_patterns("checkpoints"))
  with pytest.raises(UserError, match="has no checkpoint yet"):
    harness.run_harness(tmp_path / "bare", "tiny_mc", include_path=tasks_dir)
  too_long = " ".join(["w5"] * (T + 1))  # a continuation no bucket holds (contexts are cut)
  with pytest.raises(UserError, match=f"request of {T + 1} tokens is longer than the largest "
                                      f"bucket \\(model.block_size={T}\\)"):
    ours.loglikelihood([Instance("loglikelihood", None, ("w1", " " + too_long), 0)])
  c = default_config()
  c.model.name = "transformer"
  with pytest.raises(UserError, match="encoder-decoder"):
    harness.make_lm(c, None, None, None)
  monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
  with pytest.raises(UserError, match=r"lm-eval is not installed: pip install -e '.\[eval\]'"):
    harness.run_harness(run, "tiny_mc")


TOY_SENTENCES = [("the cat sat on the", " mat."), ("the dog sat on the", " log."),
                 ("a bird sang in the", " tree."), ("a fish swam in the", " sea.")]


def write_toy_task(d, n=20):
  """toy_mc: which word ends a sentence of conftest's TOY_TEXT (four endings, HellaSwag's
  form), after a few whole sentences; every character is in the toy corpus's vocabulary."""
  rng = np.random.default_rng(0)
  d.mkdir(parents=True, exist_ok=True)
  endings = [e for _, e in TOY_SENTENCES]
  with open(d / "toy_mc.jsonl", "w") as f:
    for _ in range(n):
      before = " ".join(a + b for a, b in (TOY_SENTENCES[i] for i in rng.integers(4, size=2)))
      k = int(rng.integers(4))
      f.write(json.dumps({"ctx": before + " " + TOY_SENTENCES[k][0], "endings": endings,
                          "label": k}) + "\n")
  (d / "toy_mc.yaml").write_text(
      f"task: toy_mc\ndataset_path: json\ndataset_kwargs:\n  cache_dir: {d / 'hf_cache'}\n"
      f"  data_files:\n    test: {d / 'toy_mc.jsonl'}\ntest_split: test\n"
      "output_type: multiple_choice\ndoc_to_text: \"{{ctx}}\"\ndoc_to_target: label\n"
      "doc_to_choice: \"{{endings}}\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  return str(d)


def test_a_sweep_with_harness_tasks_reports_their_columns(tmp_path, toy_corpus):
  """2 points x 2 seeds (vectorized: one process) with train.harness_tasks: every run logs
  harness/toy_mc/acc at its evaluations, and results.csv / results.md carry the columns."""
  import csv
  from test_sweep import write_experiment
  from llm_jax.fileio import read_metrics
  from llm_jax.sweep import report, runner, spec
  tasks = write_toy_task(tmp_path / "tasks")
  d = write_experiment(tmp_path / "exp", toy_corpus,
                       [{"train.learning_rate": 1e-3}, {"train.learning_rate": 3e-3}],
                       seeds=(0, 1), overrides={"train.harness_tasks": "toy_mc",
                                                "train.harness_include_path": tasks,
                                                "train.harness_limit": 12,
                                                "train.harness_every": 20})
  runner.run_sweep(d, vectorize=True)
  exp = spec.load_experiment(d)
  for run in exp.runs:
    evals = [r for r in read_metrics(os.path.join(run.workdir, "metrics.jsonl"))
             if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 10, 20]
    assert ["harness/toy_mc/acc" in r for r in evals] == [True, False, True]  # harness_every
  report.write_report(exp)
  with open(os.path.join(d, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4
  for r in rows:
    assert 0 <= float(r["harness/toy_mc/acc"]) <= 1
    assert 0 <= float(r["harness/toy_mc/acc_norm"]) <= 1
  md = open(os.path.join(d, "results.md")).read().splitlines()
  assert "| point | toy_mc/acc | toy_mc/acc_norm |" in md
  last = md[-1].split(" | ")  # the second point: mean ± std over its two seeds
  assert last[0] == "| learning_rate=0.003" and all("±" in c for c in last[1:])


@pytest.mark.parametrize("model", [
    {"name": "bigram"},
    {"norm": "post", "pos": "sinusoidal", "scale_embeddings": True, "qk_norm": True,
     "activation": "relu"},
    # (a mixture of experts too: its sparse FFN in the scanned stack)
    {"pos": "rope", "scan_layers": True, "n_kv_head": 1, "moe_experts": 4, "moe_top_k": 2,
     "moe_dispatch": "blocks"}],
    ids=["bigram", "gpt_post_sinusoidal_qknorm", "gpt_rope_scanned_mqa_moe"])
def test_every_lm_family_scores_as_its_own_forward(tmp_path, toy_corpus, model):
  """A run trained here (the bigram; GPTs with switches no HF layout has): each request's score
  equals the model's forward on that request alone, the context cut from the left to block_size,
  whether it was read alone or packed into one row with the other continuations of its context
  (the context read once)."""
  from conftest import tiny_config
  from llm_jax.generate import load_run
  from llm_jax.training.loop import train_and_evaluate
  c = tiny_config(toy_corpus, max_steps=1, checkpoint_every=1, eval_interval=1)
  c.model.update(model)
  if model.get("name") == "bigram":
    c.model.update(n_layer=1, n_head=1, n_embd=1)
  train_and_evaluate(c, str(tmp_path / "run"))
  config, tok, m, params, _ = load_run(tmp_path / "run")
  ours = harness.make_lm(config, tok, m, params, batch_size=4)
  rng = np.random.default_rng(0)
  text = "the cat sat on the mat. the dog sat on the log. a bird sang in the tree. "
  reqs = []
  for k in range(10):  # contexts of 3..30 characters: some longer than block_size=16
    s, n, e = int(rng.integers(0, 20)), int(rng.integers(3, 31)), int(rng.integers(1, 6))
    reqs.append(Instance("loglikelihood", None, (text[s:s + n], text[s + n:s + n + e]), k))
  for k in range(10, 40):  # 10 contexts of 1..8 characters, each with 3 endings of 1..8
    s, n = int(rng.integers(0, 20)), int(rng.integers(1, 9))
    e, at = int(rng.integers(1, 9)), int(rng.integers(0, 60))
    reqs.append(Instance("loglikelihood", None, (text[s:s + n] if k % 3 == 0 else
                                                 reqs[-1].args[0], text[at:at + e]), k))
  got = ours.loglikelihood(reqs)
  # the endings of a context were packed into one row: it was read once, not once a request
  whole = sum(min(len(ours._encode_pair(*r.args)[0]) + len(ours._encode_pair(*r.args)[1]),
                  c.model.block_size + 1) - 1 for r in reqs)
  assert ours.tokens_read < whole - 40
  # the reference: each request's own forward, right-padded to block_size (a causal model's
  # logits at a position never see what follows it) so that all of them are one program
  pairs = [ours._encode_pair(*req.args) for req in reqs]  # lm-eval's split (trailing spaces move)
  wholes = [(ctx + cont)[-(c.model.block_size + 1):] for ctx, cont in pairs]
  padded = np.zeros((len(reqs), c.model.block_size), np.int32)
  for i, whole in enumerate(wholes):
    padded[i, :len(whole) - 1] = whole[:-1]
  all_logits = np.asarray(jax.jit(lambda x: m.apply({"params": params}, x))(padded))
  for req, (ll, greedy), (ctx, cont), whole, logits in zip(reqs, got, pairs, wholes, all_logits):
    assert ctx + cont == list(tok.encode("".join(req.args)))
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    positions = range(len(whole) - 1 - len(cont), len(whole) - 1)
    ref = sum(logp[p, whole[p + 1]] for p in positions)
    assert ll == pytest.approx(ref, abs=1e-4)
    assert greedy == all(logits[p].argmax() == whole[p + 1] for p in positions)
