"""A fuzz test of the command line: for every command, random flag names and values of the wrong
type, empty, huge, negative and not UTF-8 (Python's surrogate escapes), a fixed seed and a fixed
count (not a time bound: the same command lines on any machine), in this process through cli.main. Each must end in exit 0 or in one line of error with exit
code 2, never a traceback; and a finished run it is pointed at keeps every file as it was.

Where a command's input is valid and its real work would start (a training step, a decode, the
benchmark's timing), that work is replaced by a `Reached` signal: the inputs were all accepted,
which is what is tested here, at no cost and with no memory spent on a huge accepted size.
"""

import os
import random
import re
import time

import pytest

from llm_jax.config import default_config
from test_bad_inputs import env, run_cli  # noqa: F401 -- env: this module's own trained run
from test_faults import files_digest

# a fixed seed and count; a longer search: LLM_JAX_FUZZ="<seed>,<cases>"
SEED, CASES = map(int, os.environ.get("LLM_JAX_FUZZ", "0,250").split(","))

VALUES = ["", "-1", "0", "1", "-99999999999999999999", "99999999999999999999", "1e309", "-1e-300",
          "nan", "inf", "abc", "1.5", "true", "None", "[1, 2]", "{}", "/nonexistent", "\u00e9t\u00e9",
          "ROMEO\udcff", "\udce9", "x" * 5000, "=", "--", " ", "0x10", "1_000"]
NAMES = ["--", "-", "---x", "--=1", "--config", "--config.", "--config..x", "--config.model",
         "--helpp", "--max_steps", "--nosuchflag", "--stepz", "-x", "--config.train.",
         "--\udcff", "--debug=maybe"]


class Reached(BaseException):
  """A command got past every check of its input: its real work would start here."""


def _config_fields():
  c = default_config()
  return [f"config.{s}.{k}" for s in c if hasattr(c[s], "keys") for k in c[s]
          if not hasattr(c[s][k], "keys")] + [f"config.{s}" for s in c if not hasattr(c[s], "keys")]


@pytest.fixture
def stubbed(env, monkeypatch):
  """The real work of each command replaced by Reached (see the module's docstring)."""
  import llm_jax.decoding
  from llm_jax import peaks as peak
  from llm_jax.training import loop, record

  def reached(*args, **kwargs):
    raise Reached

  real_build = loop.build_task

  def build_task(config, tokenizer):  # the finished run's model and batch build for real
    small = (config.model.to_dict() == _run_config(env).model.to_dict() and
             config.train.batch_size <= 64 and config.train.eval_iters <= 8 and
             config.train.grad_accum_steps <= 4)
    if not small:
      raise Reached
    return real_build(config, tokenizer)

  def run_open(self, start, task):  # a run that would train: its checkpoints stay
    self.manager.close()
    raise Reached

  monkeypatch.setattr(loop, "build_task", build_task)
  monkeypatch.setattr(record.Run, "open", run_open)
  monkeypatch.setattr(llm_jax.decoding, "generate", reached)
  monkeypatch.setattr(peak, "measure", reached)
  return env


def _run_config(env):
  import json
  import ml_collections
  return ml_collections.ConfigDict(json.loads((env / "run" / "config.json").read_text()))


def _short(argv):
  return repr([a if len(a) < 200 else f"{a[:20]}...({len(a)} characters)" for a in argv])


def _flags_of(command):
  code, out, _ = run_cli(command, "--help")
  assert code == 0
  # (--debug shows a traceback: not fuzzed)
  return sorted(set(re.findall(r"^  --(?:\[no\])?(\w+)", out, re.M)) - {"config", "debug"})


def test_fuzzed_command_lines_give_one_line_or_work_and_leave_a_finished_run_alone(
    stubbed, tmp_path, monkeypatch):
  d = stubbed
  monkeypatch.chdir(tmp_path)  # a relative path in a fuzzed flag (--out=abc) lands here
  bases = {
      "train": ["train", f"--config={d}/config.py", f"--workdir={d}/run"],
      "train ": ["train", f"--config={d}/config.py", f"--workdir={tmp_path}/new/run"],
      "generate": ["generate", f"--workdir={d}/run", "--prompt=the"],
      "evaluate": ["evaluate", f"--workdir={d}/run"],
      "bench": ["bench", f"--config={d}/config.py"],
      "plot": ["plot", f"{d}/run", f"--out={tmp_path}/c.png"],
      "bpe": ["bpe", f"--corpus={d}/toy.txt", "--vocab_size=270", f"--out={tmp_path}/r.tiktoken"],
      "sweep": ["sweep", f"{d}/no_such_experiment"],
      "convert": ["convert", f"--from={d}/empty_dir", f"--workdir={tmp_path}/converted"],
      "export": ["export", f"--workdir={d}/run", f"--to={tmp_path}/exported"],
      "prepare": ["prepare", f"--source={d}/toy.txt", "--tokenizer=char", "--workers=0",
                  f"--out={tmp_path}/prepared"],
  }
  fields = _config_fields()
  flag_names = {c: _flags_of(c.strip()) for c in bases}
  before = files_digest(d / "run")
  rng = random.Random(SEED)
  failures, outcomes, t0 = [], {"exit 0": 0, "exit 2": 0, "reached": 0}, time.monotonic()
  for i in range(CASES):
    command = rng.choice(sorted(bases))
    argv = list(bases[command])
    for _ in range(rng.choice([1, 1, 2, 3])):
      kind = rng.random()
      if kind < 0.45:
        name = rng.choice(flag_names[command])
      elif kind < 0.75 and "--config" in " ".join(argv):
        name = rng.choice(fields)
      else:
        argv.append(rng.choice(NAMES) + rng.choice(["", "=" + rng.choice(VALUES)]))
        continue
      argv.append(f"--{name}={rng.choice(VALUES)}")
    argv = [a.replace("{d}", str(d)) for a in argv]
    try:
      code, out, err = run_cli(*argv)
    except Reached:
      outcomes["reached"] += 1
      continue
    except Exception as e:  # noqa: BLE001 -- what the test looks for
      failures.append(f"{_short(argv)}: raised {type(e).__name__}: {e}")
      continue
    lines = err.strip().splitlines()
    prog = f"llm-jax {command.strip()}"
    if code == 0:
      outcomes["exit 0"] += 1
    elif code == 2 and lines and "Traceback" not in err and (
        lines[-1].startswith((f"{prog}: error: ", "llm-jax: error: "))) and all(
            l.startswith(("llm-jax", "W", "WARNING")) for l in lines):
      outcomes["exit 2"] += 1
    else:
      failures.append(f"{_short(argv)}: exit {code}, stderr {err[-600:]!r}")
  n = sum(outcomes.values()) + len(failures)
  print(f"{n} fuzzed command lines in {time.monotonic() - t0:.1f}s: {outcomes}, "
        f"{len(failures)} failures")
  assert not failures, "\n".join(failures[:20])
  assert n == CASES and outcomes["exit 2"] > n // 2
  assert files_digest(d / "run") == before
  assert not (tmp_path / "new").exists()  # no command that failed left its new folder behind
