"""A task joins a dataset to a model family for the training loop, which knows nothing else.

The loop asks a task for: the model and the batch keys it takes (for the loss factory), the
global batch of any step (a pure function of (seed, step)), fixed evaluation batches, extra
evaluation metrics, and a sample to show at the end.

Each model family (models/__init__.py) names its task kind, and KINDS holds what a kind does:
'lm', next-token prediction on a corpus (the language models: a prompt is continued by sampling,
a run is scored by its val loss); 'seq2seq', source -> target with teacher forcing (the
encoder-decoder: a prompt is a source to decode greedily, a run is scored by decoding a held-out
split). `build_task(config)` builds the task of config.model's kind.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax import decoding
from llm_jax.data import seq2seq as seq2seq_data
from llm_jax.data.prepare import prepare_text_corpus
from llm_jax.data.prepared import EVAL_STREAM, PreparedData
from llm_jax.errors import UserError
from llm_jax.models import FAMILIES, build_model
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.steps import TrainState, make_evaluate


class Task(NamedTuple):
  tokenizer: Any
  model: Any  # a flax.linen module
  input_keys: tuple  # the batch entries the model takes, in order
  # step -> the global batch of that step: numpy arrays shaped (grad_accum_steps, batch_size, ...)
  train_batch: Callable[[int], dict]
  # split name -> fixed evaluation batches shaped (eval_iters, batch_size, ...)
  eval_batches: dict
  # (params, {'train': loss, 'val': loss}) -> further metrics to log at each evaluation
  eval_metrics: Callable[[Any, dict], dict]
  # (params, n_tokens, seed) -> text showing what the model learned
  sample: Callable[[Any, int, int], str]
  # one line on the data, for the start-of-run summary
  summary_line: str
  tokens_per_example: int
  # what the run's data is, checked when it resumes (a prepared dataset's identity); None: not kept
  data_identity: Any = None


def prepared_lm_task(config, path, tokenizer=None) -> Task:
  """Next-token prediction on the prepared dataset at `path` (data/prepared.py): batches read from
  memory-mapped shards, row by row as the devices of this process need them. A text corpus is
  prepared first (lm_task); its run keeps the tokenizer it was built with."""
  tc, T, d = config.train, config.model.block_size, config.data
  text = d.corpus != "prepared"
  data = PreparedData(path, T, d.sampling, expected_tokenizer=tokenizer, packing=d.packing,
                      **({"name": f"corpus {d.corpus!r}", "more": "use more text"} if text else {}))
  spec = data.manifest["tokenizer"]["spec"]
  if tokenizer is None and d.tokenizer not in ("char", spec):
    raise UserError(f"config.data.tokenizer={d.tokenizer!r} differs from the prepared dataset's "
                    f"({spec!r}, {data.root}): leave it out, or prepare the data with it")
  # a text corpus's run names its tokenizer's own file, not the cache's copy
  tokenizer = tokenizer if text else data.tokenizer
  model = build_model(config.model, tokenizer.vocab_size, train_config=config.train)
  eval_shape = (tc.eval_iters, tc.batch_size)
  bytes_per_token = data.val_bytes_per_token()
  eval_batches = {name: data.get_batch(name, eval_shape, config.seed, i, stream=EVAL_STREAM)
                  for i, name in enumerate(("train", "val"))}
  rows = f"{d.sampling} windows" if d.packing == "none" else (
      f"{d.packing} rows, {data.discarded_fraction():.1%} of the packed tokens discarded")
  tokens = f"{len(data.streams['train']):,} train / {len(data.streams['val']):,} val tokens"
  return Task(
      tokenizer=tokenizer, model=model, input_keys=("inputs",),
      train_batch=lambda step: data.get_batch("train", (tc.grad_accum_steps, tc.batch_size),
                                              config.seed, step),
      eval_batches=eval_batches,
      # bits per byte from the manifest's val bytes and tokens (end-of-text tokens included)
      eval_metrics=lambda params, losses: {"val_bpb": losses["val"] / math.log(2) /
                                           bytes_per_token},
      sample=lm_sampler(tokenizer, model, T),
      summary_line=(f"vocab {tokenizer.vocab_size}, {tokens}" if text else
                    f"prepared {data.root.name} ({rows}): vocab {tokenizer.vocab_size}, {tokens}"),
      tokens_per_example=T,
      data_identity=None if text else {"path": str(data.root), "identity": data.identity})


def lm_sampler(tokenizer, model, T):
  """(params, n_tokens, seed) -> a sample from a newline (as nanoGPT's sample.py), or from token 0
  if there is none."""

  def sample(params, n_tokens, seed, prompt="\n"):
    try:
      prompt_ids = tokenizer.encode(prompt)
    except UserError:  # a vocabulary without a newline
      prompt_ids = np.zeros(1, np.int32)
    if not len(prompt_ids):  # a tokenizer that drops whitespace (an hf: one may)
      prompt_ids = np.zeros(1, np.int32)
    out = decoding.generate(model, params, jnp.asarray(prompt_ids)[None], jax.random.key(seed),
                            max_new_tokens=n_tokens, block_size=T, temperature=1.0)
    return tokenizer.decode(np.asarray(out[0, len(prompt_ids):]))
  return sample


def lm_task(config, tokenizer=None) -> Task:
  """Next-token prediction on a corpus: a prepared dataset, or a text corpus prepared into the
  data dir at its first use (data/prepare.py's prepare_text_corpus) and read the same way;
  conversations (corpus 'chat') are packed by the chat task."""
  if config.data.corpus == "chat":  # conversations, packed, the assistant's tokens in the loss
    from llm_jax.training.sft import chat_task
    fields = chat_task(config, tokenizer)
    return Task(**fields, sample=lm_sampler(fields["tokenizer"], fields["model"],
                                            config.model.block_size))
  if config.data.corpus == "prepared":
    return prepared_lm_task(config, config.data.path, tokenizer)
  path, tokenizer = prepare_text_corpus(config.data, tokenizer)
  return prepared_lm_task(config, path, tokenizer)


# val examples the seq2seq sample shows
SAMPLE_EXAMPLES = 8


def seq2seq_task(config, tokenizer=None) -> Task:
  """Source -> target with teacher forcing (the encoder-decoder): the decoder reads BOS + target
  and is scored on target + EOS, padding weighted 0. Each evaluation also decodes a fixed subset
  of the val split greedily (the distinct examples of the val batches) for token accuracy and
  exact match."""
  tc = config.train
  data = seq2seq_data.load_seq2seq_data(config.data, config.model.block_size, config.seed,
                                        tokenizer)
  tok = data.tokenizer
  model = build_model(config.model, tok.vocab_size, pad_id=tok.PAD, train_config=config.train)
  eval_batches = seq2seq_data.eval_batches(data, (tc.eval_iters, tc.batch_size), config.seed)
  n_decoded = min(tc.eval_iters * tc.batch_size, len(data.pairs["val"]))
  val = {k: v[:n_decoded] for k, v in data.arrays["val"].items()}
  S, T = val["inputs"].shape[1], val["targets"].shape[1]

  def decode_val(params):  # one batch of one shape: compiled once for the whole run
    return decoding.decode_sources(model, params, val["inputs"], max_len=T, bos_id=tok.BOS,
                                   eos_id=tok.EOS, batch_size=n_decoded)

  def eval_metrics(params, losses):
    scores = decoding.match_scores(decode_val(params), val["targets"], val["weights"])
    return {f"val_{k}": v for k, v in scores.items()}

  def sample(params, n_tokens, seed):
    """A few val sources, each with its greedy decoding and, when that is wrong, the target."""
    del n_tokens, seed  # greedy decoding of fixed examples: nothing to draw
    lines = []
    for (source, target), ids in zip(data.pairs["val"][:SAMPLE_EXAMPLES], decode_val(params)):
      out = tok.decode(ids)
      lines.append(f"{source} -> {out}" + ("" if out == target else f"   (expected {target})"))
    return "\n".join(lines)

  n = {name: len(p) for name, p in data.pairs.items()}
  return Task(
      tokenizer=tok, model=model, input_keys=("inputs", "decoder_inputs"),
      train_batch=lambda step: seq2seq_data.get_batch(
          data.arrays["train"], (tc.grad_accum_steps, tc.batch_size), config.seed, step),
      eval_batches=eval_batches, eval_metrics=eval_metrics, sample=sample,
      summary_line=f"task {config.data.task}: vocab {tok.vocab_size}, {n['train']:,} train / "
                   f"{n['val']:,} val / {n['test']:,} test examples, sources of <= {S} and "
                   f"targets of <= {T - 1} characters",
      tokens_per_example=S + T)


def lm_generate(config, tokenizer, model, params, prompt, *, max_new_tokens, temperature, top_k,
                top_p, greedy, num_samples, seed, on_tokens=None, program_dir=None) -> list[str]:
  """`num_samples` continuations of `prompt` (decoded in one batch), without the prompt.
  on_tokens: called with each step's new tokens as they are drawn; program_dir: where the decode
  program is kept, exported (decoding.generate's)."""
  prompt_ids = tokenizer.encode(prompt)
  if not len(prompt_ids):
    raise UserError(f"--prompt={prompt!r} encodes to no tokens with this run's tokenizer (it drops "
                    f"such text): give a prompt with words in it")
  prompt_BP = jnp.asarray(np.tile(prompt_ids, (num_samples, 1)))
  out_BN = decoding.generate(model, params, prompt_BP, jax.random.key(seed),
                             max_new_tokens=max_new_tokens, block_size=config.model.block_size,
                             temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                             program_dir=program_dir, on_tokens=on_tokens)
  return [tokenizer.decode(row[len(prompt_ids):]) for row in np.asarray(out_BN)]


def seq2seq_generate(config, tokenizer, model, params, prompt, *, max_new_tokens,
                     **sampling) -> list[str]:
  """The one greedy decoding of the source `prompt`, of at most max_new_tokens tokens (and at
  most model.block_size)."""
  del sampling  # greedy: nothing is drawn (nor kept exported)
  inputs_1S = seq2seq_data.encode_sources(tokenizer, [prompt], config.model.block_size,
                                          name="--prompt")
  out_1L = decoding.greedy_decode(model, params, jnp.asarray(inputs_1S),
                                  max_len=min(max_new_tokens, config.model.block_size),
                                  bos_id=tokenizer.BOS, eos_id=tokenizer.EOS)
  return [tokenizer.decode(out_1L[0])]


def lm_evaluate(config, tokenizer, model, params, *, split, beam_size, alpha) -> dict:
  """The mean loss over the task's fixed val batches, and its bits per byte."""
  del alpha  # beam search only
  if split != "val":
    raise UserError(f"--split={split}: a language model's corpus has a train and a val split "
                    f"only: use --split=val")
  if beam_size != 1:
    raise UserError(f"--beam_size={beam_size}: beam search is for seq2seq models; a language "
                    f"model is scored by its loss: leave --beam_size out")
  task = lm_task(config, tokenizer)
  loss_fn = make_loss_fn(model, task.input_keys)
  state = TrainState(step=None, params=params, opt_state=None)  # evaluation reads params only
  # (a prepared dataset's batches are lazy: read here)
  batches = {k: np.asarray(v) for k, v in task.eval_batches["val"].items()}
  loss = float(jax.jit(make_evaluate(loss_fn))(state, batches))
  return {"loss": loss, "bpb": task.eval_metrics(params, {"val": loss})["val_bpb"]}


# sources decoded per call (times the beam size: rows of the decoder)
DECODE_BATCH = 256


def seq2seq_evaluate(config, tokenizer, model, params, *, split, beam_size, alpha) -> dict:
  """Every source of the split decoded (greedily or by beam search) against its target: token
  accuracy and exact match."""
  data = seq2seq_data.load_seq2seq_data(config.data, config.model.block_size, config.seed,
                                        tokenizer)
  arrays = data.arrays[split]
  predicted = decoding.decode_sources(
      model, params, arrays["inputs"], max_len=arrays["targets"].shape[1], bos_id=tokenizer.BOS,
      eos_id=tokenizer.EOS, beam_size=beam_size, alpha=alpha, batch_size=DECODE_BATCH)
  scores = decoding.match_scores(predicted, arrays["targets"], arrays["weights"])
  return {"task": config.data.task, "examples": len(predicted), "beam_size": beam_size,
          "alpha": alpha, **scores}


class TaskKind(NamedTuple):
  build: Callable[..., Task]  # (config, tokenizer or None) -> the Task the loop trains
  # (config, tokenizer, model, params, prompt, **sampling) -> texts (`llm-jax generate`)
  generate: Callable[..., list]
  # (config, tokenizer, model, params, split=, beam_size=, alpha=) -> scores (`llm-jax evaluate`)
  evaluate: Callable[..., dict]
  # the generated text continues the prompt (a language model), rather than answer it
  continues_prompt: bool


KINDS = {"lm": TaskKind(lm_task, lm_generate, lm_evaluate, continues_prompt=True),
         "seq2seq": TaskKind(seq2seq_task, seq2seq_generate, seq2seq_evaluate,
                             continues_prompt=False)}


def task_kind(config) -> TaskKind:
  """What config.model's family trains on, and how it generates and evaluates."""
  return KINDS[FAMILIES[config.model.name].task]


def build_task(config, tokenizer=None) -> Task:
  """The task of config.model's kind. `tokenizer`: the one saved with a run being resumed."""
  return task_kind(config).build(config, tokenizer)
