"""The command line: `llm-jax <command> [flags]` (also `python -m llm_jax <command>`).

    llm-jax train --config=configs/gpt_char.py --workdir=runs/x --config.model.n_layer=2

Flags are absl flags; `--config` is an ml_collections config file whose fields are overridden as
`--config.<section>.<field>=value`. `llm-jax <command> --help` (or -h) lists the command's flags
with their defaults. A user mistake prints one line (`llm-jax <command>: error: ...`) and exits 2;
`--debug` shows the traceback instead. absl and Orbax INFO logs stay off the terminal unless
`--verbosity=0` (or higher) asks for them.
"""

import difflib
import gc
import os
import re
import sys
import textwrap
from typing import Callable, NamedTuple

from absl import app, flags, logging

from llm_jax.errors import UserError
from llm_jax.training.signals import Interrupted

FLAGS = flags.FLAGS
# the flags that ask for a command's help: its own flags (--helpfull: absl's too)
HELP_FLAGS = {"-h", "-?", "--help", "--helpshort", "--helpfull"}
REQUIRED = set()  # flags the command cannot run without


def _required(names):
  flags.mark_flags_as_required(names)
  REQUIRED.update(names)


def _define_common(argv):
  flags.DEFINE_bool("debug", False, "show the full traceback of an error")


class _ConfigFileParser(flags.ArgumentParser):
  """--config=<file>[:<arg>]: the file's get_config(<arg>), loaded by fileio.load_python_file.
  Every --config.<section>.<field> override in argv is checked here against the config, before
  ml_collections applies it, so a field that does not exist is one line naming it."""

  def __init__(self, argv):
    self.overrides = [a for a in argv if re.match(r"--?(no)?config\.", a)]

  def parse(self, value):
    import ml_collections
    from llm_jax.fileio import load_python_file
    path, _, arg = value.partition(":")
    module = load_python_file(path, f"--config={path}",
                              "pass a config file such as configs/gpt_char.py")
    if not callable(getattr(module, "get_config", None)):
      raise UserError(f"--config={path} has no get_config(): define one returning the config "
                      f"(see configs/gpt_char.py)")
    try:
      config = module.get_config(*([arg] if arg else []))
    except UserError:
      raise
    except Exception as e:  # noqa: BLE001 -- a user's file: its own error, on one line
      raise UserError(f"--config={value}: get_config() failed: {type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
      raise UserError(f"--config={value}: get_config() returned a {type(config).__name__}, not an "
                      f"ml_collections.ConfigDict (start from llm_jax.config.default_config())")
    for override in self.overrides:
      _check_override(config, override)
    config.lock()
    return config

  def flag_type(self):
    return "config file"


def _check_override(config, arg):
  """--config.<a>.<b>=value must name a field of config: else a UserError saying which part."""
  name = arg.split("=", 1)[0].lstrip("-").removeprefix("no")
  node, where = config, "config"
  for key in name.split(".")[1:]:
    if not hasattr(node, "keys"):
      raise UserError(f"{arg}: {where} is a value, not a section: set it as --{where}=value")
    if key not in node:
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      hint = f"; did you mean --{where}.{close[0]}?" if close else ""
      raise UserError(f"{arg}: {where} has no field {key!r}{hint} (every field is documented in "
                      f"llm_jax/config.py)")
    node, where = node[key], f"{where}.{key}"


def define_config_flag(argv, flag_values=FLAGS):
  """--config and its --config.<section>.<field>=value overrides (ml_collections' config flag),
  the file read by _ConfigFileParser."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values["config"].parser = _ConfigFileParser(argv)


def _define_train(argv):
  define_config_flag(argv)
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics; resumed if it exists")
  _define_profile()
  _required(["config", "workdir"])


def _define_profile():
  flags.DEFINE_string("profile_dir", None, "trace --profile_steps steps there with jax.profiler "
                      "(TensorBoard, Perfetto) and print the costliest operations")
  flags.DEFINE_integer("profile_steps", 5, "steps traced with --profile_dir")


def _train(argv):
  from llm_jax.config import is_rl, validate
  from llm_jax.sweep.worker import train_hooks
  from llm_jax.training import parallel
  from llm_jax.training.loop import train_and_evaluate
  from llm_jax.training.workdir import removed_if_failed
  validate(FLAGS.config)  # before the device count is set from it
  if is_rl(FLAGS.config):
    raise UserError(f"config.rl.task={FLAGS.config.rl.task!r} makes this an RL config: run it "
                    f"with `llm-jax rl`, or set --config.rl.task='' to train a language model")
  parallel.set_cpu_devices(FLAGS.config)
  with removed_if_failed(FLAGS.workdir):  # a run that never trained leaves no folder behind
    train_and_evaluate(FLAGS.config, FLAGS.workdir, train_hooks(), profile_dir=FLAGS.profile_dir,
                       profile_steps=FLAGS.profile_steps)


def _define_rl(argv):
  define_config_flag(argv)
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics; resumed if it exists")
  _required(["config", "workdir"])


def _rl(argv):
  from llm_jax.config import validate
  from llm_jax.rl.loop import rl_train
  from llm_jax.training import parallel
  from llm_jax.training.workdir import removed_if_failed
  validate(FLAGS.config)  # before the device count is set from it
  parallel.set_cpu_devices(FLAGS.config)
  from llm_jax.sweep.worker import defaults
  with removed_if_failed(FLAGS.workdir):
    rl_train(FLAGS.config, FLAGS.workdir, defaults())


def _define_bpe(argv):
  flags.DEFINE_string("corpus", None, "UTF-8 text to learn from: a file or a glob ('books/*.txt')")
  flags.DEFINE_integer("vocab_size", None, "tokens in all: 256 bytes + merges + 4 special tokens")
  flags.DEFINE_string("out", None, "the rank file to write (.tiktoken), beside it its <out>.json")
  _required(["corpus", "vocab_size", "out"])


def _bpe(argv):
  import pathlib
  from llm_jax.data import bpe
  if FLAGS.vocab_size < bpe.MIN_VOCAB_SIZE:
    raise UserError(f"--vocab_size={FLAGS.vocab_size} is too small: use at least "
                    f"{bpe.MIN_VOCAB_SIZE} (256 bytes + 4 special tokens + 1 merge)")
  out = pathlib.Path(FLAGS.out).expanduser()
  if out.is_dir() or not out.name:
    raise UserError(f"--out={FLAGS.out} is a directory: pass a file name such as books.tiktoken")
  try:
    r = bpe.train_to_file(bpe.read_corpus(FLAGS.corpus), FLAGS.vocab_size, out)
  except OSError as e:  # the rank file or its sidecar cannot be written there
    raise UserError(f"--out={FLAGS.out} cannot be written ({e.strerror or e}): pick another "
                    f"path") from None
  print(f"llm-jax bpe: {r['merges']} merges in {r['train_s']:.1f}s ({r['merges_per_s']:.0f}/s), "
        f"vocab {r['vocab_size']}, {r['bytes_per_token']:.2f} bytes/token on the corpus; "
        f"wrote {r['out']} (sha256 {r['sha256'][:16]}...); use it as "
        f"--config.data.tokenizer=bpe:{out.absolute()}", flush=True)


def _define_generate(argv):
  flags.DEFINE_string("workdir", None, "the training run to sample from")
  flags.DEFINE_string("prompt", "\n", "text to continue (nanoGPT's samples start from a newline)")
  flags.DEFINE_string("prompt_file", None, "read the prompt from this UTF-8 file instead")
  flags.DEFINE_integer("max_new_tokens", 500, "tokens to generate after the prompt")
  flags.DEFINE_float("temperature", 1.0, "divides the logits; 0 means greedy")
  flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens only (0: off)")
  flags.DEFINE_float("top_p", 1.0, "sample within the smallest set of probability >= p (1: off)")
  flags.DEFINE_bool("greedy", False, "always take the most likely token")
  flags.DEFINE_integer("num_samples", 1, "samples, decoded together in one batch")
  flags.DEFINE_integer("seed", 0, "sampling seed: the same seed gives the same samples")
  flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
  flags.DEFINE_bool("stream", False, "print the sample's text as its tokens are drawn")
  flags.DEFINE_string("prompts", None, "many prompts, decoded together: a JSONL of "
                      '{"prompt": ...} or a text file, one prompt a line; writes JSONL')
  flags.DEFINE_string("output", None, "with --prompts: write the JSONL here (default: stdout)")
  _required(["workdir"])


def _generate(argv):
  from llm_jax.fileio import read_utf8
  from llm_jax.generate import generate_text
  from llm_jax.training.tasks import task_kind
  from llm_jax.training import workdir as workdir_lib
  import pathlib
  if FLAGS.prompt_file and FLAGS["prompt"].present:
    raise UserError("--prompt and --prompt_file both give the prompt: pass one of them")
  if FLAGS.prompts:
    return _generate_many()
  if FLAGS.output:
    raise UserError("--output is where --prompts' JSONL goes: pass --prompts too")
  prompt = read_utf8(pathlib.Path(FLAGS.prompt_file)) if FLAGS.prompt_file else FLAGS.prompt
  from llm_jax.sweep.worker import defaults
  config = (workdir_lib.read_config(FLAGS.workdir, defaults()) if os.path.isdir(FLAGS.workdir)
            else None)
  # a language model continues the prompt; a seq2seq model's output is the target alone
  continues = config is None or task_kind(config).continues_prompt
  if not continues:
    _check_seq2seq_generate(config, prompt)
  if FLAGS.stream and (not continues or FLAGS.num_samples > 1):
    raise UserError("--stream prints one language model's sample as it is drawn: drop "
                    "--num_samples" if continues else "--stream: a seq2seq model's output is "
                    "decoded at once; drop --stream")
  printed = []  # --stream: the prompt goes out with the first text (after every check passed)

  def on_text(text):
    print(("" if printed else prompt) + text, end="", flush=True)
    printed.append(True)

  # with JAX's persistent compilation cache on (main's default) the decode program is kept there
  # too, exported: a later `llm-jax generate` of the same shapes does not trace the model
  import jax
  xla_cache = jax.config.jax_compilation_cache_dir
  samples = generate_text(FLAGS.workdir, prompt, FLAGS.max_new_tokens, FLAGS.temperature,
                          FLAGS.top_k, FLAGS.top_p, FLAGS.greedy, FLAGS.num_samples, FLAGS.seed,
                          FLAGS.step, on_text=on_text if FLAGS.stream else None,
                          program_dir=xla_cache and os.path.join(xla_cache, "llm_jax_decode"))
  if FLAGS.stream:
    print("" if printed else prompt, flush=True)
    return
  for i, text in enumerate(samples):
    if len(samples) > 1:
      print(f"--- sample {i + 1} ---")
    print(prompt + text if continues else text, flush=True)
  if not continues and not samples[0]:
    print("llm-jax generate: warning: the model decoded an empty output for this prompt",
          file=sys.stderr, flush=True)


def _generate_many():
  """--prompts: one JSON line per prompt, in order, to --output or stdout."""
  import json
  from llm_jax.generate import generate_many, read_prompts
  if FLAGS.prompt_file or FLAGS["prompt"].present or FLAGS.stream:
    raise UserError("--prompts gives every prompt and writes JSONL: drop --prompt, "
                    "--prompt_file and --stream")
  records = generate_many(FLAGS.workdir, read_prompts(FLAGS.prompts), FLAGS.max_new_tokens,
                          FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.greedy,
                          FLAGS.num_samples, FLAGS.seed, FLAGS.step)
  lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if FLAGS.output:
    from llm_jax.fileio import atomic_write
    try:
      with atomic_write(FLAGS.output, "w") as f:
        f.write(lines)
    except OSError as e:
      raise UserError(f"--output={FLAGS.output} cannot be written ({e.strerror or e}): pick "
                      f"another path") from None
  else:
    sys.stdout.write(lines)
    sys.stdout.flush()


def _check_seq2seq_generate(config, prompt):
  """A seq2seq model decodes its one output greedily: the sampling flags are refused, not
  ignored; a source shorter than those of its generated task is refused too (the model, never
  shown one, would answer with an empty line)."""
  given = [f"--{n}" for n in ("num_samples", "top_k", "top_p", "temperature", "greedy", "seed")
           if FLAGS[n].present]
  if given:
    raise UserError(f"{', '.join(given)}: model {config.model.name!r} decodes its one output "
                    f"greedily (nothing is sampled): drop {'them' if len(given) > 1 else 'it'}")
  d = config.data
  if d.task != "pairs_file" and prompt and len(prompt) < d.min_length:
    raise UserError(f"--prompt={prompt!r} has {len(prompt)} character(s), fewer than any source "
                    f"this model learned (task {d.task!r}: {d.min_length} to {d.max_length}): "
                    f"give a prompt of that length")


def _define_evaluate(argv):
  flags.DEFINE_string("workdir", None, "the training run to evaluate")
  flags.DEFINE_enum("split", "val", ["val", "test"], "held-out split (test: seq2seq tasks only)")
  flags.DEFINE_integer("beam_size", 1, "transformer: beam search width (1: greedy decoding)")
  flags.DEFINE_float("alpha", 0.6, "transformer: beam length penalty ((5 + len) / 6) ** alpha")
  flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
  _required(["workdir"])


def _evaluate(argv):
  import json
  from llm_jax.evaluate import describe, evaluate_run
  result = evaluate_run(FLAGS.workdir, FLAGS.split, FLAGS.beam_size, FLAGS.alpha, FLAGS.step)
  print(f"llm-jax evaluate: {describe(result)}")
  print(json.dumps(result), flush=True)


def _define_sweep(argv):
  flags.DEFINE_integer("jobs", 1, "training processes at once (each takes a share of the cores)")
  flags.DEFINE_bool("vectorize", False, "train runs that differ only in seed, learning rate, "
                    "weight decay or dropout together, in one vmapped program")
  flags.DEFINE_bool("report", False, "only write the report (results.csv/.md, plots) from the "
                    "runs so far")
  flags.DEFINE_bool("status", False, "only show each run's state: finished, running, pending, "
                    "failed (with its last error line) or not submitted")
  flags.DEFINE_enum("launcher", "local", ["local", "submitit"], "local: a pool of processes here "
                    "(--jobs); submitit: one job per run, submitted, then the command returns")
  flags.DEFINE_enum("submitit_cluster", "slurm", ["slurm", "local", "debug"], "submitit's "
                    "executor: slurm (sbatch), local (subprocesses here) or debug (this process)")
  flags.DEFINE_string("slurm_partition", None, "SLURM partition of the jobs")
  flags.DEFINE_integer("slurm_time", 60, "time limit of each job, in minutes (a job stopped by "
                       "it saves, is requeued and resumes)")
  flags.DEFINE_integer("slurm_gpus_per_task", None, "GPUs of each task (process)")
  flags.DEFINE_integer("slurm_cpus_per_task", None, "CPU cores of each task (process)")
  flags.DEFINE_string("slurm_mem", None, "memory of each node, as sbatch --mem takes it: 64G")
  flags.DEFINE_string("slurm_additional", "", "more sbatch options: key=value,key=value "
                      "(qos=high,constraint=a100)")


SUBMITIT_FLAGS = ("submitit_cluster", "slurm_partition", "slurm_time", "slurm_gpus_per_task",
                  "slurm_cpus_per_task", "slurm_mem", "slurm_additional")


def _cluster():
  try:
    from llm_jax.sweep import cluster
  except ImportError as e:
    if e.name != "submitit":
      raise
    raise UserError("submitit is not installed: pip install -e '.[slurm]'") from None
  return cluster


def _sweep(argv):
  from llm_jax.sweep import report, runner, spec
  if len(argv) != 2:
    raise UserError("name one experiment folder: llm-jax sweep experiments/<name> [--jobs=2]")
  if FLAGS.status:
    _cluster().status(argv[1])
  elif FLAGS.report:
    print(f"llm-jax sweep: wrote {', '.join(report.write_report(spec.load_experiment(argv[1])))}")
  elif FLAGS.launcher == "submitit":
    cluster = _cluster()
    params = {"timeout_min": FLAGS.slurm_time, "slurm_partition": FLAGS.slurm_partition,
              "slurm_gpus_per_task": FLAGS.slurm_gpus_per_task,
              "slurm_cpus_per_task": FLAGS.slurm_cpus_per_task, "slurm_mem": FLAGS.slurm_mem,
              "slurm_additional_parameters": cluster.parse_additional(FLAGS.slurm_additional)}
    cluster.submit(argv[1], FLAGS.submitit_cluster, params)
  else:
    given = [f"--{f}" for f in SUBMITIT_FLAGS if FLAGS[f].present]
    if given:
      raise UserError(f"{', '.join(given)}: for --launcher=submitit only (add it, or drop them)")
    runner.run_sweep(argv[1], FLAGS.jobs, FLAGS.vectorize)


def _define_plot(argv):
  flags.DEFINE_string("out", "curves.png", "the PNG file to write")


def _plot(argv):
  from llm_jax.plot import plot_runs
  out = plot_runs(argv[1:], FLAGS.out)
  print(f"llm-jax plot: wrote the loss curves of {len(argv) - 1} run(s) to {out}", flush=True)


def _define_bench(argv):
  define_config_flag(argv)
  flags.DEFINE_integer("steps", 20, "timed train steps (after the warm-up)")
  flags.DEFINE_integer("warmup", 3, "untimed train steps after the compiling one")
  flags.DEFINE_integer("vocab_size", 65, "vocabulary of the benchmarked model (65: Tiny Shakespeare's)")
  flags.DEFINE_integer("decode_tokens", 100, "tokens decoded (batch 1, KV cache) for the decode speed")
  flags.DEFINE_string("json_out", None, "also write the JSON figures to this file")
  _define_profile()
  _required(["config"])


def _bench(argv):
  from llm_jax.bench import train as bench_train
  from llm_jax.config import validate
  from llm_jax.training import parallel
  validate(FLAGS.config)
  parallel.set_cpu_devices(FLAGS.config)
  bench_train.main(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.vocab_size, FLAGS.decode_tokens,
                   FLAGS.json_out, profile_dir=FLAGS.profile_dir,
                   profile_steps=FLAGS.profile_steps)


def _define_convert(argv):
  flags.DEFINE_string("from", None, "a Hugging Face model directory: config.json + "
                      "model.safetensors (GPT2LMHeadModel or LlamaForCausalLM)")
  flags.DEFINE_string("workdir", None, "the run directory to create")
  flags.DEFINE_string("tokenizer", "", "the tokenizer, as config.data.tokenizer (default: the "
                      "directory's tokenizer.json, else tiktoken:gpt2 for GPT-2's vocabulary)")
  _required(["from", "workdir"])


def _convert(argv):
  from llm_jax import convert
  from llm_jax.training.workdir import removed_if_failed
  with removed_if_failed(FLAGS.workdir, keep_work=False):  # a run is converted whole or not at all
    r = convert.convert(FLAGS["from"].value, FLAGS.workdir, FLAGS.tokenizer)
  print(f"llm-jax: {r['architecture']} of {r['params'] / 1e6:.2f}M parameters converted into "
        f"{r['workdir']} (step 0; tokenizer {r['tokenizer']}): sample it with `llm-jax generate "
        f"--workdir={r['workdir']}`, fine-tune it with configs/finetune.py", flush=True)


def _define_export(argv):
  flags.DEFINE_string("workdir", None, "the run to export")
  flags.DEFINE_string("to", None, "the directory to write config.json and model.safetensors in")
  flags.DEFINE_integer("step", None, "checkpoint step to export (default: the latest)")
  _required(["workdir", "to"])


def _export(argv):
  from llm_jax import convert
  from llm_jax.training.workdir import removed_if_failed
  with removed_if_failed(FLAGS.to, keep_work=False):
    r = convert.export(FLAGS.workdir, FLAGS.to, FLAGS.step)
  tok = ("and its tokenizer.json" if r["tokenizer"] == "tokenizer.json" else
         f"without a tokenizer.json (the run's tokenizer is {r['tokenizer']})")
  print(f"llm-jax: step {r['step']} written to {r['out']} as {r['architecture']} ({r['tensors']} "
        f"tensors, float32) {tok}: transformers' AutoModelForCausalLM.from_pretrained loads it",
        flush=True)


def _define_prepare(argv):
  flags.DEFINE_string("source", None, "text files (a path or glob; .jsonl and .parquet read "
                      "--text_field), a directory saved by datasets, or hf:<name>[:<config>]")
  flags.DEFINE_string("tokenizer", None, "as config.data.tokenizer: char, tiktoken:<encoding>, "
                      "bpe:<rank file>, bpe:train:<vocab size> (trained on a sample), hf:<file>")
  flags.DEFINE_string("out", None, "the dataset directory to write (an unfinished one resumes)")
  flags.DEFINE_string("text_field", "text", "the JSON field or Parquet/datasets column of the text")
  flags.DEFINE_string("separator", "", "text files: cut each file into documents at this string "
                      "(escapes such as \\n\\n work); '': one file, one document")
  flags.DEFINE_string("val", "0.005", "documents held out for validation: a count (the first N) "
                      "or a fraction (evenly spread)")
  flags.DEFINE_integer("shard_tokens", 100_000_000, "tokens per shard (the last one fewer)")
  flags.DEFINE_integer("workers", -1, "tokenizing processes (-1: one per core, 0: none)")
  flags.DEFINE_integer("bpe_sample_bytes", 8 << 20, "bpe:train:N: characters of the training "
                       "documents it learns from")
  flags.DEFINE_enum("format", "text", ["text", "chat"], "text: documents to token shards "
                    "(data.corpus=prepared); chat: conversations ({'messages': [...]} a JSONL line "
                    "or a Parquet row) rendered with the chat template (data.corpus=chat); "
                    "--tokenizer=run:<workdir> takes a run's tokenizer (to fine-tune it)")
  _required(["source", "tokenizer", "out"])


def _prepare_chat():
  import json
  from llm_jax.data.chat import ChatTokenizer, prepare_chat, read_chat_source
  from llm_jax.data.tokenizers import (make_tokenizer, normalization_of, normalize,
                                       tokenizer_from_dict)
  spec = FLAGS.tokenizer
  if spec.startswith("run:"):  # the tokenizer of the run that will be fine-tuned
    path = os.path.join(spec[4:], "tokenizer.json")
    if not os.path.isfile(path):
      raise UserError(f"--tokenizer={spec}: {path} does not exist: name a run's workdir")
    with open(path, encoding="utf-8") as f:
      base = tokenizer_from_dict(json.load(f))
  else:  # built as a chat run builds it (training/sft.py chat_tokenizer), on the conversations
    form = normalization_of("auto", spec)
    text = normalize("".join(m["content"] for c in read_chat_source(FLAGS.source) for m in c),
                     form)
    base = make_tokenizer(spec, text, "", form)
  m = prepare_chat(FLAGS.source, ChatTokenizer(base), FLAGS.out)
  print(f"llm-jax prepare: {m['conversations']:,} conversations, {m['tokens']:,} tokens "
        f"({m['loss_tokens']:,} assistant) at {FLAGS.out}: train with --config.data.corpus=chat "
        f"--config.data.path={FLAGS.out}", flush=True)


def _prepare(argv):
  if FLAGS.format == "chat":
    return _prepare_chat()
  from llm_jax.data.prepare import prepare
  m = prepare(FLAGS.source, FLAGS.tokenizer, FLAGS.out, text_field=FLAGS.text_field,
              separator=FLAGS.separator, val=FLAGS.val, shard_tokens=FLAGS.shard_tokens,
              workers=FLAGS.workers, bpe_sample_bytes=FLAGS.bpe_sample_bytes)
  n_shards = sum(len(s["shards"]) for s in m["splits"].values())
  skipped = f", {m['skipped_empty']:,} empty skipped" if m["skipped_empty"] else ""
  print(f"llm-jax prepare: {m['documents']:,} documents{skipped}, {m['tokens']:,} tokens "
        f"({m['splits']['val']['tokens']:,} val) of {m['bytes'] / 1e6:,.1f} MB in {n_shards} "
        f"shards at {FLAGS.out}: train with --config.data.corpus=prepared "
        f"--config.data.path={FLAGS.out}", flush=True)


def _define_harness(argv):
  flags.DEFINE_string("workdir", None, "the run to evaluate (trained, or made by convert)")
  flags.DEFINE_string("tasks", None, "lm-eval task names, comma-separated (hellaswag,arc_easy)")
  flags.DEFINE_integer("num_fewshot", None, "examples in each prompt (default: the task's)")
  flags.DEFINE_float("limit", None, "items per task (a fraction if < 1; default: all)")
  flags.DEFINE_string("include_path", "", "a folder of local lm-eval task YAML files")
  flags.DEFINE_integer("batch_size", 32, "requests scored at once (a fixed shape)")
  flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
  flags.DEFINE_string("output", "", "also write lm-eval's results dictionary (JSON) here")
  _required(["workdir", "tasks"])


def _harness(argv):
  from llm_jax import harness
  limit = FLAGS.limit if FLAGS.limit is None or FLAGS.limit < 1 else int(FLAGS.limit)
  results, paths = harness.run_harness(FLAGS.workdir, FLAGS.tasks, FLAGS.num_fewshot, limit,
                                       FLAGS.include_path, FLAGS.batch_size, FLAGS.step,
                                       FLAGS.output)
  from lm_eval.utils import make_table
  print(make_table(results), flush=True)
  if "groups" in results:
    print(make_table(results, "groups"), flush=True)
  print(f"llm-jax harness: results written to {', '.join(paths)}", flush=True)


def _define_chat(argv):
  flags.DEFINE_string("workdir", None, "a run fine-tuned on conversations (data.corpus=chat)")
  flags.DEFINE_integer("max_new_tokens", 256, "the longest reply, in tokens")
  flags.DEFINE_float("temperature", 0.0, "divides the logits; 0 means greedy")
  flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens only (0: off)")
  flags.DEFINE_float("top_p", 1.0, "sample within the smallest set of probability >= p (1: off)")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
  _required(["workdir"])


def _chat(argv):
  from llm_jax.chat import chat_from_run, run_chat
  from llm_jax.generate import check_sampling
  check_sampling(FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, 1,
                 vocab_size=2**31, seed=FLAGS.seed)
  run_chat(chat_from_run(FLAGS.workdir, FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k,
                         FLAGS.top_p, FLAGS.seed, FLAGS.step))


class Command(NamedTuple):
  """One `llm-jax <name>`: everything the dispatcher, the usage and the help know of it."""
  about: str  # what it does, for the usage list and its --help
  example: str  # one command line
  define: Callable  # (argv) -> None: defines its flags
  run: Callable  # (argv) -> None: the command itself
  args: str = ""  # its positional arguments (paths) besides the flags, for its usage line
  # it compiles JAX programs: JAX's persistent compilation cache spares a second run of the same
  # config its compilation (~/.cache/llm_jax/xla; LLM_JAX_COMPILATION_CACHE=off disables it)
  compiles: bool = False
  # it writes nothing: its objects are frozen out of the garbage collector when it is done, which
  # spares the interpreter's last collection at exit (memory goes back with the process anyway)
  read_only: bool = False


COMMANDS = {
    "train": Command("train a model from a config",
                     "llm-jax train --config=configs/gpt_char.py --workdir=runs/gpt",
                     _define_train, _train, compiles=True),
    "rl": Command("RL with verifiable rewards",
                  "llm-jax rl --config=configs/rl_arithmetic.py --workdir=runs/rl",
                  _define_rl, _rl, compiles=True),
    "generate": Command("sample from a trained run",
                        'llm-jax generate --workdir=runs/gpt --prompt="ROMEO:"',
                        _define_generate, _generate, compiles=True, read_only=True),
    "chat": Command("chat with a fine-tuned run", "llm-jax chat --workdir=runs/sft",
                    _define_chat, _chat, compiles=True, read_only=True),
    "bpe": Command("train a byte-level BPE",
                   "llm-jax bpe --corpus=a.txt --vocab_size=4096 --out=a.tiktoken",
                   _define_bpe, _bpe),
    "evaluate": Command("score on held-out data",
                        "llm-jax evaluate --workdir=runs/t --split=test --beam_size=4",
                        _define_evaluate, _evaluate, compiles=True, read_only=True),
    "sweep": Command("run an experiment's grid",
                     "llm-jax sweep experiments/norm_warmup --jobs=2 [--vectorize | "
                     "--launcher=submitit]",
                     _define_sweep, _sweep, args=" <experiment folder>"),
    "plot": Command("draw runs' loss curves", "llm-jax plot runs/a runs/b --out=curves.png",
                    _define_plot, _plot, args=" <workdir> [<workdir> ...]"),
    "bench": Command("speed, MFU and memory",
                     "llm-jax bench --config=configs/gpt_char_baby.py --steps=20",
                     _define_bench, _bench, compiles=True),
    "convert": Command("import an HF checkpoint",
                       "llm-jax convert --from=hf/gpt2 --workdir=runs/gpt2",
                       _define_convert, _convert),
    "export": Command("write an HF checkpoint",
                      "llm-jax export --workdir=runs/gpt2 --to=hf/gpt2_tuned",
                      _define_export, _export),
    "prepare": Command("tokenize a corpus to shards",
                       "llm-jax prepare --source='data/*.jsonl' --tokenizer=tiktoken:gpt2 "
                       "--out=data/x",
                       _define_prepare, _prepare),
    "harness": Command("lm-eval tasks on a run",
                       "llm-jax harness --workdir=runs/gpt2 --tasks=hellaswag,arc_easy "
                       "--limit=500",
                       _define_harness, _harness, compiles=True),
}


def _usage() -> str:
  return ("usage: llm-jax <command> [--flags]\n\ncommands:\n" +
          "".join(f"  {name:<9} {c.about + ':':<28} {c.example}\n" for name, c in COMMANDS.items())
          + "\n`llm-jax <command> --help` lists a command's flags and their defaults.")


def _quiet_logs():
  """absl turns INFO on once flags are parsed; keep WARNING unless --verbosity was given."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def _fail(prog, message):
  # a path or value of other bytes (surrogate escapes) is shown escaped, never an encoding error
  message = message.encode("utf-8", "backslashreplace").decode("utf-8")
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


def _traceback_and_exit():
  """--debug: the traceback of the user error being handled, and still exit code 2."""
  import traceback
  traceback.print_exc()
  sys.exit(2)


def _help(name, names, full=False) -> str:
  """`llm-jax <name> --help`: what the command does, an example, and its flags `names` with
  their defaults; full: absl's flags after them."""
  c = COMMANDS[name]
  lines = [f"usage: llm-jax {name} [--flag=value ...]{c.args}", "", f"{c.about}, for example:",
           f"  {c.example}", "", "flags:"]
  for n in names:
    f = FLAGS[n]
    flag = f"--[no]{n}" if isinstance(f, flags.BooleanFlag) else f"--{n}"
    default = ("required" if n in REQUIRED else "" if "(default" in f.help else
               "default: none" if f.default is None else
               f"default: {f.default!r}" if isinstance(f.default, str) else
               f"default: {str(f.default).lower() if isinstance(f.default, bool) else f.default}")
    lines.append(textwrap.fill(f"{flag:<18} {f.help}" + (f" ({default})" if default else ""), 100,
                               initial_indent="  ", subsequent_indent=" " * 21))
  if "config" in names:
    lines.append(textwrap.fill(f"{'--config.<section>.<field>=value'} override a field of the "
                               f"config (every field and its default: llm_jax/config.py)", 100,
                               initial_indent="  ", subsequent_indent=" " * 21))
  if full:
    lines += ["", "all flags, by module (absl's included):", FLAGS.get_help()]
  else:
    lines += ["", "--helpfull also lists absl's flags (logging and others)."]
  return "\n".join(lines)


def _parse_flags(argv):
  """absl's parser, with every mistake (unknown flag or config field, bad value, missing config
  file) reported on one line."""
  prog = argv[0]
  debug = any(a in ("--debug", "--debug=true", "--debug=True") for a in argv)
  try:
    rest = FLAGS(argv)
    if "config" in FLAGS:
      FLAGS.config.to_dict()  # loads the file and applies the overrides now, not at first use
    return rest
  except UserError as e:  # the config file: missing, failing, or an override of no field
    if debug:
      _traceback_and_exit()
    _fail(prog, str(e))
  except flags.Error as e:
    if debug:
      _traceback_and_exit()
    missing = re.search(r"Flag --(\w+) must have a value other than None", str(e))
    if missing:
      _fail(prog, f"--{missing[1]} is required ({FLAGS[missing[1]].help}); `{prog} --help` "
                  f"lists the flags")
    # absl's message of a boolean flag is a Python tuple: said in words
    text = re.sub(r"\('Non-boolean argument to boolean flag', (.+?)\)",
                  r"\1 is not a boolean: use true or false", "; ".join(str(e).splitlines()))
    _fail(prog, text + _config_hint(str(e)) + f" (`{prog} --help` lists the flags)")
  except Exception as e:  # noqa: BLE001 -- anything else ml_collections raises, on one line
    if debug:
      _traceback_and_exit()
    message = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], BaseException) else e
    _fail(prog, "; ".join(l.strip() for l in str(message).splitlines() if l.strip()))


def _config_hint(error: str) -> str:
  """An unknown flag that is a config field (`--max_steps=10`): the override that sets it."""
  unknown = re.search(r"Unknown command line flag '(?:no)?(\w+)'", error)
  if not unknown:
    return ""
  from llm_jax.config import default_config
  c = default_config()
  where = [f"--config.{section}.{unknown[1]}" for section in c
           if hasattr(c[section], "keys") and unknown[1] in c[section]]
  where += [f"--config.{unknown[1]}"] if unknown[1] in c and not hasattr(c[unknown[1]], "keys") \
      else []
  return f"; a config field is set as {' or '.join(where)}=value" if where else ""


# flags that name a file or folder: empty (or blank), they would name the current folder
PATH_FLAGS = ("workdir", "to", "out", "from", "corpus", "prompt_file", "json_out", "profile_dir",
              "prompts", "output")


def _run(command: Command):
  def main(argv):
    _quiet_logs()
    if len(argv) > 1 and not command.args:
      _fail(argv[0], f"unexpected arguments {argv[1:]}: flags are --name=value (`{argv[0]} --help` "
                     f"lists them)")
    paths = [(f"--{n}", FLAGS[n].value or "", FLAGS[n].help) for n in PATH_FLAGS
             if n in FLAGS and FLAGS[n].present]
    for name, value, what in paths + [("an argument", a, "a run or folder") for a in argv[1:]]:
      if not value.strip():
        _fail(argv[0], f"{name} is empty: pass a path ({what})")
      if any(len(os.fsencode(part)) > 255 for part in value.split(os.sep)):  # NAME_MAX
        _fail(argv[0], f"{name} has a file name longer than 255 bytes ({value[:40]}...): use a "
                       f"shorter name")
    try:
      if command.compiles:
        from llm_jax.training.parallel import enable_compilation_cache
        enable_compilation_cache()
      command.run(argv)
      if command.read_only:
        gc.freeze()
    except UserError as e:
      if FLAGS.debug:
        _traceback_and_exit()
      _fail(argv[0], str(e))
    except Interrupted as e:  # a run stopped by SIGINT/SIGTERM after saving: where to resume
      print(f"{argv[0]}: {e}", file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print(f"{argv[0]}: interrupted", file=sys.stderr)
      sys.exit(130)
  return main


def _check_utf8(argv):
  """Python reads bytes that are not UTF-8 as surrogate escapes, which no text function takes: a
  command-line argument of such bytes is refused here, naming it."""
  prog = f"llm-jax {argv[1]}" if len(argv) > 1 and argv[1] in COMMANDS else "llm-jax"
  for a in argv[1:]:
    try:
      a.encode("utf-8")
    except UnicodeEncodeError:
      name = a.split("=", 1)[0] if a.startswith("-") else "an argument"
      _fail(prog, f"{name} is not UTF-8 text ({os.fsencode(a)!r}): pass UTF-8 (a prompt of "
                  f"other bytes: convert its file to UTF-8 and pass --prompt_file)")


class _ClosedPipeSafe:
  """stdout whose reader may leave (`llm-jax train ... | head -1`): what is written after that is
  dropped, and the command goes on (a run keeps training and saving) instead of ending in a
  BrokenPipeError."""

  def __init__(self, stream):
    self._stream = stream

  def _closed(self):
    os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())  # later writes: nowhere

  def write(self, text):
    try:
      return self._stream.write(text)
    except BrokenPipeError:
      self._closed()
      return len(text)

  def flush(self):
    try:
      self._stream.flush()
    except BrokenPipeError:
      self._closed()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def main(argv=None):
  if argv is None and any(a.startswith("--profile_dir") for a in sys.argv[2:]):
    from llm_jax.training.profile import flags_for_tracing  # read when the backend starts
    os.environ["XLA_FLAGS"] = flags_for_tracing(os.environ)
  argv = list(sys.argv if argv is None else argv)
  _check_utf8(argv)
  if sys.stdout is sys.__stdout__:
    sys.stdout = _ClosedPipeSafe(sys.stdout)
  if len(argv) >= 2 and argv[1] in ("--version", "version"):
    from llm_jax import __version__
    print(f"llm-jax {__version__}")
    sys.exit(0)
  if len(argv) >= 3 and argv[1] == "help" and argv[2] in COMMANDS:  # `llm-jax help train`
    argv = [argv[0], argv[2], "--help"]
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name not in COMMANDS:
    print(f"llm-jax: error: unknown command {name!r}: use one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    sys.exit(2)
  command = COMMANDS[name]
  argv = [f"llm-jax {name}"] + argv[2:]
  before = set(FLAGS)
  REQUIRED.clear()
  _define_common(argv)
  command.define(argv)
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  asked = HELP_FLAGS.intersection(args)
  if asked:
    own = [n for n in FLAGS if n not in before and n != "debug"] + ["debug"]
    try:
      print(_help(name, own, full="--helpfull" in asked), flush=True)
    except BrokenPipeError:  # `llm-jax train --help | head`: the rest is not wanted
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  app.run(_run(command), argv=argv, flags_parser=_parse_flags)
