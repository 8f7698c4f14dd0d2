"""The command line: `llm-jax <command> [flags]` (also `python -m llm_jax <command>`).

    llm-jax train --config=configs/gpt_char.py --workdir=runs/x --config.model.n_layer=2

Flags are absl flags; `--config` is an ml_collections config file whose fields are overridden as
`--config.<section>.<field>=value`. A user mistake prints one line (`llm-jax <command>: error: ...`)
and exits 2; `--debug` shows the traceback instead. absl and Orbax INFO logs stay off the terminal
unless `--verbosity=0` (or higher) asks for them.
"""

import sys

from absl import app, flags, logging

from llm_jax import hostmem
from llm_jax.errors import UserError
from llm_jax.training.signals import Interrupted

FLAGS = flags.FLAGS
USAGE = """usage: llm-jax <command> [--flags]

commands:
  train     train a model from a config: llm-jax train --config=configs/gpt_char.py --workdir=runs/gpt
  generate  sample from a trained run:   llm-jax generate --workdir=runs/gpt --prompt="ROMEO:"
  bpe       train a byte-level BPE:      llm-jax bpe --corpus=a.txt --vocab_size=4096 --out=a.tiktoken
  evaluate  score on held-out data:      llm-jax evaluate --workdir=runs/t --split=test --beam_size=4
  sweep     run an experiment's grid:    llm-jax sweep experiments/norm --jobs=2 [--vectorize]
  plot      draw runs' loss curves:      llm-jax plot runs/a runs/b --out=curves.png
  bench     speed, MFU and memory:       llm-jax bench --config=configs/gpt_char_baby.py --steps=20

`llm-jax <command> --helpshort` lists a command's flags."""


def _define_common():
  flags.DEFINE_bool("debug", False, "show the full traceback of an error")


def _define_train():
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics; resumed if it exists")
  flags.mark_flags_as_required(["config", "workdir"])


def _train(argv):
  from llm_jax.config import validate
  from llm_jax.training import parallel
  from llm_jax.training.loop import train_and_evaluate
  validate(FLAGS.config)  # before the device count is set from it
  parallel.set_cpu_devices(FLAGS.config)
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _define_bpe():
  flags.DEFINE_string("corpus", None, "UTF-8 text to learn from: a file or a glob ('books/*.txt')")
  flags.DEFINE_integer("vocab_size", None, "tokens in all: 256 bytes + merges + 4 special tokens")
  flags.DEFINE_string("out", None, "the rank file to write (.tiktoken), beside it its <out>.json")
  flags.mark_flags_as_required(["corpus", "vocab_size", "out"])


def _bpe(argv):
  import pathlib
  from llm_jax.data import bpe
  if FLAGS.vocab_size < bpe.MIN_VOCAB_SIZE:
    raise UserError(f"--vocab_size={FLAGS.vocab_size} is too small: use at least "
                    f"{bpe.MIN_VOCAB_SIZE} (256 bytes + 4 special tokens + 1 merge)")
  out = pathlib.Path(FLAGS.out).expanduser()
  if out.is_dir() or not out.name:
    raise UserError(f"--out={FLAGS.out} is a directory: pass a file name such as books.tiktoken")
  r = bpe.train_to_file(bpe.read_corpus(FLAGS.corpus), FLAGS.vocab_size, out)
  print(f"llm-jax bpe: {r['merges']} merges in {r['train_s']:.1f}s ({r['merges_per_s']:.0f}/s), "
        f"vocab {r['vocab_size']}, {r['bytes_per_token']:.2f} bytes/token on the corpus; "
        f"wrote {r['out']} (sha256 {r['sha256'][:16]}...); use it as "
        f"--config.data.tokenizer=bpe:{out.absolute()}", flush=True)


def _define_generate():
  flags.DEFINE_string("workdir", None, "the training run to sample from")
  flags.DEFINE_string("prompt", "\n", "text to continue (default: a newline, as nanoGPT)")
  flags.DEFINE_string("prompt_file", None, "read the prompt from this UTF-8 file instead")
  flags.DEFINE_integer("max_new_tokens", 500, "tokens to generate after the prompt")
  flags.DEFINE_float("temperature", 1.0, "divides the logits; 0 means greedy")
  flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens only (0: off)")
  flags.DEFINE_float("top_p", 1.0, "sample within the smallest set of probability >= p (1: off)")
  flags.DEFINE_bool("greedy", False, "always take the most likely token")
  flags.DEFINE_integer("num_samples", 1, "samples, decoded together in one batch")
  flags.DEFINE_integer("seed", 0, "sampling seed: the same seed gives the same samples")
  flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
  flags.mark_flags_as_required(["workdir"])


def _generate(argv):
  from llm_jax.fileio import read_utf8
  from llm_jax.generate import generate_text
  from llm_jax.training import workdir as workdir_lib
  import pathlib
  prompt = read_utf8(pathlib.Path(FLAGS.prompt_file)) if FLAGS.prompt_file else FLAGS.prompt
  samples = generate_text(FLAGS.workdir, prompt, FLAGS.max_new_tokens, FLAGS.temperature,
                          FLAGS.top_k, FLAGS.top_p, FLAGS.greedy, FLAGS.num_samples, FLAGS.seed,
                          FLAGS.step)
  # a language model continues the prompt; the transformer's output is the target alone
  translates = workdir_lib.read_config(FLAGS.workdir).model.name == "transformer"
  for i, text in enumerate(samples):
    if len(samples) > 1:
      print(f"--- sample {i + 1} ---")
    print(text if translates else prompt + text, flush=True)


def _define_evaluate():
  flags.DEFINE_string("workdir", None, "the training run to evaluate")
  flags.DEFINE_enum("split", "val", ["val", "test"], "held-out split (test: seq2seq tasks only)")
  flags.DEFINE_integer("beam_size", 1, "transformer: beam search width (1: greedy decoding)")
  flags.DEFINE_float("alpha", 0.6, "transformer: beam length penalty ((5 + len) / 6) ** alpha")
  flags.DEFINE_integer("step", None, "checkpoint step to load (default: the latest)")
  flags.mark_flags_as_required(["workdir"])


def _evaluate(argv):
  import json
  from llm_jax.evaluate import describe, evaluate_run
  result = evaluate_run(FLAGS.workdir, FLAGS.split, FLAGS.beam_size, FLAGS.alpha, FLAGS.step)
  print(f"llm-jax evaluate: {describe(result)}")
  print(json.dumps(result), flush=True)


def _define_sweep():
  flags.DEFINE_integer("jobs", 1, "training processes at once (each takes a share of the cores)")
  flags.DEFINE_bool("vectorize", False, "train runs that differ only in seed, learning rate, "
                    "weight decay or dropout together, in one vmapped program")
  flags.DEFINE_bool("report", False, "only write the report (results.csv/.md, plots) from the "
                    "runs so far")


def _sweep(argv):
  from llm_jax.sweep import report, runner, spec
  if len(argv) != 2:
    raise UserError("name one experiment folder: llm-jax sweep experiments/<name> [--jobs=2]")
  if FLAGS.report:
    print(f"llm-jax sweep: wrote {', '.join(report.write_report(spec.load_experiment(argv[1])))}")
  else:
    runner.run_sweep(argv[1], FLAGS.jobs, FLAGS.vectorize)


COMMANDS = {"train": (_define_train, _train), "generate": (_define_generate, _generate)}
COMMANDS["bpe"] = (_define_bpe, _bpe)
COMMANDS["evaluate"] = (_define_evaluate, _evaluate)
COMMANDS["sweep"] = (_define_sweep, _sweep)


def _define_plot():
  flags.DEFINE_string("out", "curves.png", "the PNG file to write")


def _plot(argv):
  from llm_jax.plot import plot_runs
  out = plot_runs(argv[1:], FLAGS.out)
  print(f"llm-jax plot: wrote the loss curves of {len(argv) - 1} run(s) to {out}", flush=True)


COMMANDS["plot"] = (_define_plot, _plot)


def _define_bench():
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 20, "timed train steps (after the warm-up)")
  flags.DEFINE_integer("warmup", 3, "untimed train steps after the compiling one")
  flags.DEFINE_integer("vocab_size", 65, "vocabulary of the benchmarked model (65: Tiny Shakespeare's)")
  flags.DEFINE_integer("decode_tokens", 100, "tokens decoded (batch 1, KV cache) for the decode speed")
  flags.DEFINE_string("json_out", None, "also write the JSON figures to this file")
  flags.mark_flags_as_required(["config"])


def _bench(argv):
  from llm_jax.bench import train as bench_train
  from llm_jax.config import validate
  from llm_jax.training import parallel
  validate(FLAGS.config)
  parallel.set_cpu_devices(FLAGS.config)
  bench_train.main(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.vocab_size, FLAGS.decode_tokens,
                   FLAGS.json_out)


COMMANDS["bench"] = (_define_bench, _bench)


def _quiet_logs():
  """absl turns INFO on once flags are parsed; keep WARNING unless --verbosity was given."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def _fail(prog, message):
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


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
  except flags.Error as e:
    if debug:
      raise
    _fail(prog, "; ".join(str(e).splitlines()) + " (--helpshort lists the flags)")
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field that does not exist
    if debug:
      raise
    field = str(e).strip("\"'")
    _fail(prog, f"config has no field {field!r} (from a --config.<section>.<field> override): "
                f"see the config file for the fields")
  except Exception as e:  # the config file is missing or failed to load
    if debug:
      raise
    _fail(prog, "; ".join(l.strip() for l in str(e).splitlines() if l.strip()))


# commands that take positional arguments (paths) besides their flags
TAKES_ARGS = {"sweep", "plot"}


# commands that compile JAX programs: JAX's persistent compilation cache spares a second run of
# the same config its compilation (~/.cache/llm_jax/xla; LLM_JAX_COMPILATION_CACHE=off disables it)
COMPILES = {"train", "generate", "evaluate", "bench"}


def _run(command_main, takes_args=False, compiles=False):
  def main(argv):
    _quiet_logs()
    if len(argv) > 1 and not takes_args:
      raise app.UsageError(f"unexpected arguments {argv[1:]}: flags are --name=value")
    try:
      if compiles:
        from llm_jax.training.parallel import enable_compilation_cache
        enable_compilation_cache()
      command_main(argv)
    except UserError as e:
      if FLAGS.debug:
        raise
      _fail(argv[0], str(e))
    except Interrupted as e:  # a run stopped by SIGINT/SIGTERM after saving: where to resume
      print(f"{argv[0]}: {e}", file=sys.stderr, flush=True)
      sys.exit(e.exit_code)
    except KeyboardInterrupt:
      print(f"{argv[0]}: interrupted", file=sys.stderr)
      sys.exit(130)
  return main


def main(argv=None):
  if argv is None and len(sys.argv) > 1 and sys.argv[1] in COMPILES:
    hostmem.reexec_with_hugepages(sys.argv)  # the program itself, not a call from Python
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(USAGE)
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name not in COMMANDS:
    print(f"llm-jax: error: unknown command {name!r}: use one of {', '.join(COMMANDS)}",
          file=sys.stderr)
    sys.exit(2)
  define, command_main = COMMANDS[name]
  _define_common()
  define()
  app.run(_run(command_main, name in TAKES_ARGS, name in COMPILES),
          argv=[f"llm-jax {name}"] + argv[2:], flags_parser=_parse_flags)
