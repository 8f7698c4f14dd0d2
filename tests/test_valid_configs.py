"""What validation accepts, runs: a property test (Hypothesis) over the config's documented ranges.

Each example is a config drawn field by field within what llm_jax/config.py documents (every model
switch, the optimizers and schedules, the data and tokenizer fields, the mesh), tiny (a toy corpus,
widths of 8-32, one or two layers, blocks of 8-16 tokens). A drawn config that `validate` accepts
must then do what `llm-jax train` and `llm-jax generate` do, without an exception: build its task
and model, place the state on its devices, take two training steps, evaluate, and generate a few
tokens. A UserError there fails too: a check that can be made before anything is built belongs in
validation. (The mesh's sizes and the batch split, which depend on the devices validation cannot
see, are drawn to fit the 8 simulated devices.)

The loop's parts run directly (train_and_evaluate would add checkpoint files, at a second each);
they are the loop's own functions (loop.program's: placement, steps.run_functions, the steps; the
task's eval metrics and the kind's generate), in the order it calls them.

A fixed number of examples, drawn from a fixed seed (derandomize): the coverage does not depend on
the machine's speed. Each family is split over two tests (one device, the devices), so that the
suite's two workers share them. An example costs its programs' compilation, a few CPU seconds
(docs/validation.md has the figures and the longer search).
"""

import os
import time

import jax
import numpy as np
import pytest

pytest.importorskip("hypothesis")  # the dev extra's (an environment without it skips this file)
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from conftest import TOY_TEXT  # noqa: E402
from llm_jax.config import default_config, validate  # noqa: E402
from llm_jax.data.bpe import MIN_VOCAB_SIZE  # noqa: E402
from llm_jax.data.seq2seq import distinct_sources  # noqa: E402
from llm_jax.errors import UserError  # noqa: E402
from llm_jax.models import FAMILIES, flops_per_token  # noqa: E402
from llm_jax.models.flops import count_params  # noqa: E402
from llm_jax.models.layers import ACTIVATIONS, REMAT_POLICIES  # noqa: E402
from llm_jax.training import parallel  # noqa: E402
from llm_jax.training.steps import run_functions  # noqa: E402
from llm_jax.training.optimizer import OPTIMIZERS, SCHEDULES, lr_schedule, make_optimizer  # noqa: E402
from llm_jax.training.tasks import build_task, task_kind  # noqa: E402

# examples per (family, placement): 15 in all in the suite, what fits its time on 2 cores (an
# example is four compiled programs, 1-16 s of CPU); LLM_JAX_PROPERTY_EXAMPLES=<n> draws n per
# test (the full run of the issue, 200 and more: docs/validation.md)
EXAMPLES = {("bigram", "one device"): 4, ("bigram", "devices"): 2,
            ("gpt", "one device"): 4, ("gpt", "devices"): 2,
            ("transformer", "one device"): 2, ("transformer", "devices"): 1}
if os.environ.get("LLM_JAX_PROPERTY_EXAMPLES"):
  EXAMPLES = dict.fromkeys(EXAMPLES, int(os.environ["LLM_JAX_PROPERTY_EXAMPLES"]))
N_DEVICES = 8  # conftest.py's simulated CPU devices


def _settings(n):
  return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def no_persistent_cache():
  """Each example's programs are compiled once: writing them to the session's persistent
  compilation cache would only cost time."""
  before = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
  yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("valid_configs")
  (d / "toy.txt").write_text(TOY_TEXT, encoding="utf-8")
  # words of 3 letters: a pair's 7 characters fit the smallest drawn block_size (8) with EOS.
  # A file whose lines do not fit is refused in one line when it is read (data/seq2seq.py), not
  # by validation, which reads no data; a config drawn here must be one that runs.
  words = ["cat", "dog", "owl", "sea", "elm", "log", "mat", "eel"]
  pairs = [f"{a} {b}\t{b} {a}" for a in words for b in words]
  (d / "pairs.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
  return d


# --- the strategies: each draws a field within its documented range -------------------------


@st.composite
def placements(draw, c, group):
  """parallel and mesh: one device ('none'), or the devices: the mesh (data x fsdp x tensor over
  the 8 devices) or pmap; a batch that divides by the devices it is split over."""
  mode = "none" if group == "one device" else draw(st.sampled_from(["auto", "auto", "pmap"]))
  c.parallel = mode
  split = 1
  if mode == "auto":
    tensor = draw(st.sampled_from([1, 1, 2]))
    fsdp = draw(st.sampled_from([1, 2]))
    data = N_DEVICES // (tensor * fsdp)
    free = draw(st.sampled_from(["data", "fsdp", "tensor", None]))
    c.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    if free:
      c.mesh[free] = -1
    split = data * fsdp
  elif mode == "pmap":
    split = N_DEVICES
  c.train.batch_size = split * draw(st.integers(1, 2)) if split > 1 else draw(st.integers(1, 4))


@st.composite
def training(draw, c):
  """The optimizer, its knobs and the schedule, within their documented ranges."""
  t = c.train
  t.grad_accum_steps = draw(st.integers(1, 2))
  t.max_steps = draw(st.integers(2, 40))
  t.lr_decay_steps = draw(st.sampled_from([t.max_steps, t.max_steps + draw(st.integers(1, 20))]))
  t.warmup_steps = draw(st.integers(0, t.lr_decay_steps - 1)) if draw(st.booleans()) else \
      draw(st.integers(0, 60)) if t.lr_decay_steps == t.max_steps else 0
  t.learning_rate = draw(st.floats(1e-5, 0.1))
  t.min_lr = draw(st.floats(0, t.learning_rate))
  t.schedule = draw(st.sampled_from(SCHEDULES))
  t.decay_fraction = draw(st.floats(0, 1))
  t.optimizer = draw(st.sampled_from([o for o in OPTIMIZERS
                                      if o not in FAMILIES[c.model.name].refuses_optimizers]))
  t.weight_decay = draw(st.sampled_from([0.0, 0.1, draw(st.floats(0, 2))]))
  t.beta1 = draw(st.floats(0, 0.999))
  t.beta2 = draw(st.floats(0, 0.999))
  t.momentum = draw(st.floats(0, 0.999))
  t.nesterov = draw(st.booleans())
  t.muon_ns_steps = draw(st.integers(1, 6))
  t.muon_consistent_rms = draw(st.sampled_from([0.0, 0.2, draw(st.floats(0, 2))]))
  t.muon_adam_lr_ratio = draw(st.floats(0.01, 10))
  t.grad_clip = draw(st.sampled_from([0.0, 1.0, draw(st.floats(0, 10))]))
  t.eval_iters = draw(st.integers(1, 2))
  t.nan_policy = draw(st.sampled_from(["stop", "skip"]))
  t.sample_tokens = draw(st.integers(0, 5))


@st.composite
def blocks(draw, c, family):
  """The model switches of the attention/FFN blocks (gpt and transformer)."""
  m = c.model
  m.n_layer = draw(st.integers(1, 2))
  m.n_head = draw(st.sampled_from([1, 2, 4]))
  m.n_embd = m.n_head * draw(st.sampled_from([k for k in (2, 4, 6, 8, 16)
                                              if 8 <= m.n_head * k <= 32]))
  m.n_kv_head = draw(st.sampled_from([0] + [k for k in (1, 2, 4) if m.n_head % k == 0]))
  m.norm = draw(st.sampled_from(["pre", "post"]))
  m.norm_type = draw(st.sampled_from(["layernorm", "rmsnorm"]))
  m.norm_eps = draw(st.sampled_from([1e-5, 1e-6, draw(st.floats(1e-8, 0.1))]))
  poss = ["learned", "sinusoidal", "rope"] + (["none"] if family != "transformer" else [])
  if (m.n_embd // m.n_head) % 2:
    poss.remove("rope")
  m.pos = draw(st.sampled_from(poss))
  if m.pos == "rope":
    m.rope_theta = draw(st.sampled_from([10000.0, draw(st.floats(1.0, 1e6))]))
  m.activation = draw(st.sampled_from(sorted(ACTIVATIONS)))
  m.ffn_hidden = draw(st.sampled_from([0, draw(st.integers(1, 48))]))
  m.qk_norm = draw(st.booleans())
  m.attention = draw(st.sampled_from(["einsum", "dot_product"]))
  # (each drawn less often than not: they cost the most compilation)
  m.scan_layers = draw(st.sampled_from([False, False, True]))
  m.remat = draw(st.sampled_from(["none"] * 4 + sorted(REMAT_POLICIES)))
  if family == "transformer":
    m.share_embeddings = draw(st.booleans())
  else:
    m.scale_embeddings = draw(st.booleans())


@st.composite
def common(draw, c):
  """What every family reads: the seed, the context, dropout, precision, the embedding."""
  c.seed = draw(st.integers(0, 2**63 - 1))
  m = c.model
  m.block_size = draw(st.integers(8, 16))
  m.max_len = draw(st.sampled_from([0, m.block_size + draw(st.integers(0, 8))]))
  m.dropout = draw(st.sampled_from([0.0, draw(st.floats(0, 0.9))]))
  m.dropout_bits = draw(st.sampled_from([8, 16, 32]))
  m.dtype = draw(st.sampled_from(["auto", "float32", "bfloat16"]))
  m.vocab_size = draw(st.sampled_from([0, 0, 512]))
  m.tie_embeddings = draw(st.booleans())
  m.use_bias = draw(st.booleans())
  c.data.normalize = draw(st.sampled_from(["auto", "none", "NFC", "NFKC", "NFD", "NFKD"]))


@st.composite
def sampling(draw):
  """`llm-jax generate`'s sampling flags."""
  return {"max_new_tokens": draw(st.integers(1, 6)), "temperature": draw(st.floats(0, 3)),
          "top_k": draw(st.integers(0, 20)), "top_p": draw(st.floats(0.01, 1)),
          "greedy": draw(st.booleans()), "num_samples": draw(st.integers(1, 2)),
          "seed": draw(st.integers(0, 2**63 - 1))}


@st.composite
def configs(draw, family, group, files):
  c = default_config()
  c.model.name = family
  c.data.corpus, c.data.path = "text_file", str(files / "toy.txt")
  draw(common(c))
  if family != "bigram":
    draw(blocks(c, family))
  else:  # a table: the block's fields stay at their defaults (validation refuses others)
    c.model.update(n_layer=1, n_head=1, n_embd=8)
  if family == "transformer":
    c.data.task = draw(st.sampled_from(["copy", "reverse", "sort", "add", "pairs_file"]))
    if c.data.task == "pairs_file":
      c.data.path = str(files / "pairs.tsv")
    else:
      c.data.path = ""
      fits = (c.model.block_size - 2) // 2 if c.data.task == "add" else c.model.block_size - 1
      c.data.min_length = draw(st.integers(1, 3))
      c.data.max_length = draw(st.integers(c.data.min_length, min(5, fits)))
      # well within the distinct examples there are (close to them, drawing them all may fail:
      # a one-line error)
      distinct = distinct_sources(c.data.task, c.data.min_length, c.data.max_length)
      c.data.num_examples = draw(st.integers(min(30, distinct // 2), min(200, distinct // 2)))
    # val and test take heldout_examples each, and some must be left to train (validation)
    examples = 64 if c.data.task == "pairs_file" else c.data.num_examples  # the file: 8 x 8
    c.data.heldout_examples = draw(st.integers(1, max(1, min(10, (examples - 1) // 2))))
    c.data.normalize = "auto"
  else:
    c.data.tokenizer = draw(st.sampled_from(["char", "char", f"bpe:train:{MIN_VOCAB_SIZE + 8}"]))
  draw(training(c))
  draw(placements(c, group))
  return c


# --- the check: what train and generate do, on the drawn config ------------------------------


def trains_evaluates_and_generates(c, generate_flags):
  """The training loop's parts on config c (loop._program, its steps and logging, the end), then
  `llm-jax generate`'s decode. Raises what they raise."""
  validate(c)
  task = build_task(c)
  tc = c.train
  tx = make_optimizer(tc)
  place = parallel.placement(c, task.model, tx)
  fns = run_functions(c, task, tx, place.axis_name, tc.nan_policy == "skip")
  init_key, dropout_key = jax.random.split(jax.random.key(c.seed))
  state = place.create_state(lambda: fns.init(init_key))
  n_params, n_params_flops = count_params(jax.eval_shape(lambda p: p, state.params))
  flops_per_token(c.model, n_params_flops)
  train_step, evaluate = place.steps(fns.train_step, fns.evaluate, dropout_key)
  param_norm = place.replicated_fn(fns.param_norm)
  schedule = lr_schedule(tc)
  for step in range(2):
    state, metrics = train_step(state, place.put_batch(task.train_batch(step)))
    assert np.isfinite(float(place.local(metrics["loss"])))
    float(schedule(step)), float(place.local(param_norm(state.params)))
  losses = {name: float(place.local(evaluate(state, place.put_batch(b))))
            for name, b in task.eval_batches.items()}
  assert all(np.isfinite(v) for v in losses.values()), losses
  params = place.to_host(state).params
  task.eval_metrics(params, losses)
  if tc.sample_tokens and not task_kind(c).continues_prompt:
    # (a language model's end-of-run sample is the decoding `generate` runs below)
    task.sample(params, tc.sample_tokens, c.seed)
  # a language model continues text; the transformer decodes a source (a training one: its
  # characters are in the vocabulary)
  prompt = ("the" if task_kind(c).continues_prompt else
            task.tokenizer.decode(task.train_batch(0)["inputs"][0, 0]))
  out = task_kind(c).generate(c, task.tokenizer, task.model, params, prompt, **generate_flags)
  assert out and all(isinstance(s, str) for s in out)
  return out


def _check(c, generate_flags) -> bool:
  """Whether c trains, evaluates and generates; a failure raises, or under
  LLM_JAX_PROPERTY_LOG is written down and returns False (the test fails at the end)."""
  t0 = time.process_time()
  try:
    trains_evaluates_and_generates(c, generate_flags)
    if os.environ.get("LLM_JAX_PROPERTY_LOG"):  # and what each example costs
      with open(os.environ["LLM_JAX_PROPERTY_LOG"], "a") as f:
        print(f"ok {c.model.name} {c.parallel} {c.train.optimizer} layers={c.model.n_layer} "
              f"scan={c.model.scan_layers} remat={c.model.remat} {c.data.tokenizer}: "
              f"{time.process_time() - t0:.1f} CPU s", file=f)
    return True
  except Exception as e:
    if os.environ.get("LLM_JAX_PROPERTY_LOG"):  # a search for findings: each written down
      import traceback
      with open(os.environ["LLM_JAX_PROPERTY_LOG"], "a") as f:
        print(f"{traceback.format_exc()}\n{c}\n{generate_flags}\n=====", file=f)
      return False
    if isinstance(e, UserError):  # a check that needs what validation cannot see: one line
      raise AssertionError(f"a valid config was refused at run time: {e}\n{c}") from e
    raise


@pytest.mark.parametrize("group", ["one device", "devices"])
@pytest.mark.parametrize("family", ["bigram", "gpt", "transformer"])
def test_configs_that_validate_train_evaluate_and_generate(family, group, files):
  failed = []

  @_settings(EXAMPLES[family, group])
  @given(c=configs(family, group, files), flags=sampling())
  def check(c, flags):
    if not _check(c, flags):
      failed.append(c.model.name)
  check()
  assert not failed, f"{len(failed)} examples failed: see {os.environ['LLM_JAX_PROPERTY_LOG']}"
