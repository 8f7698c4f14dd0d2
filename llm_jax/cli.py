"""The command line: `llm-jax <command> [flags]` (also `python -m llm_jax <command>`).

    llm-jax train --config=configs/gpt_char.py --workdir=runs/x --config.model.n_layer=2

Flags are absl flags; `--config` is an ml_collections config file whose fields are overridden as
`--config.<section>.<field>=value`. A user mistake prints one line (`llm-jax <command>: error: ...`)
and exits 2; `--debug` shows the traceback instead. absl and Orbax INFO logs stay off the terminal
unless `--verbosity=0` (or higher) asks for them.
"""

import sys

from absl import app, flags, logging

from llm_jax.errors import UserError

FLAGS = flags.FLAGS
USAGE = """usage: llm-jax <command> [--flags]

commands:
  train   train a model from a config: llm-jax train --config=configs/gpt_char.py --workdir=runs/gpt

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
  from llm_jax.training.loop import train_and_evaluate
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


COMMANDS = {"train": (_define_train, _train)}


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


def _run(command_main):
  def main(argv):
    _quiet_logs()
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}: flags are --name=value")
    try:
      command_main(argv)
    except UserError as e:
      if FLAGS.debug:
        raise
      _fail(argv[0], str(e))
    except KeyboardInterrupt:
      print(f"{argv[0]}: interrupted", file=sys.stderr)
      sys.exit(130)
  return main


def main(argv=None):
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
  app.run(_run(command_main), argv=[f"llm-jax {name}"] + argv[2:], flags_parser=_parse_flags)
