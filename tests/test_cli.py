"""The command line, run for real as a subprocess: `python -m llm_jax train ...`."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import FAST_COMPILE, TOY_TEXT

ROOT = pathlib.Path(__file__).parent.parent
TINY = ["--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=16",
        "--config.model.block_size=16", "--config.train.batch_size=4",
        "--config.train.max_steps=6", "--config.train.warmup_steps=1", "--config.train.eval_interval=3",
        "--config.train.eval_iters=1", "--config.train.log_interval=3",
        "--config.train.checkpoint_every=3", "--config.train.sample_tokens=20"]


def llm_jax(*args, timeout=120):
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE}  # the devices a user has
  return subprocess.run([sys.executable, "-m", "llm_jax", *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def corpus(tmp_path):
  path = tmp_path / "toy.txt"
  path.write_text(TOY_TEXT)
  return path


def test_train_runs_resumes_and_prints_a_sample(corpus, tmp_path):
  workdir = tmp_path / "run"
  args = ["train", "--config=configs/gpt_char.py", f"--workdir={workdir}",
          "--config.data.corpus=text_file", f"--config.data.path={corpus}", *TINY]
  r = llm_jax(*args)
  assert r.returncode == 0, r.stderr
  assert "step 6: train loss" in r.stdout and "--- sample ---" in r.stdout
  assert "INFO" not in r.stderr  # absl/Orbax logs stay quiet by default
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]
  for name in ("config.json", "tokenizer.json", "metrics.jsonl", "summary.json"):
    assert (workdir / name).exists()
  # the same command with more steps continues from step 6; --profile_dir traces the steps after
  # the first logged interval (here only step 8, the last) and names their costliest operations
  r = llm_jax(*args[:-1], "--config.train.max_steps=9", "--config.train.sample_tokens=0",
              f"--profile_dir={tmp_path / 'prof'}")
  assert r.returncode == 0, r.stderr
  assert "resuming at step 6" in r.stdout and "step 9: train loss" in r.stdout
  line = next(l for l in r.stdout.splitlines() if "llm-jax: profile of steps" in l)
  assert line.startswith(f"llm-jax: profile of steps 8-8 in {tmp_path / 'prof'}"), line
  ops = line.split("by operation: ")[1].split(", ")
  assert any("fusion" in op for op in ops), ops  # XLA's operations, not the runtime's
  assert list((tmp_path / "prof").glob("plugins/profile/*/perfetto_trace.json.gz"))


@pytest.mark.parametrize("extra,expect", [
    (["--config.model.n_head=3"], "config.model.n_embd=16 is invalid"),
    (["--config.data.path=/nonexistent/*.txt"], "matches no file"),
    (["--config.model.block_size=5000", "--config.model.max_len=0"], "fewer than model.block_size"),
    (["--config.model.dropout=2.0"], "config.model.dropout"),
])
def test_user_errors_are_one_line_and_exit_2(corpus, tmp_path, extra, expect):
  r = llm_jax("train", "--config=configs/gpt_char.py", f"--workdir={tmp_path / 'run'}",
              "--config.data.corpus=text_file", f"--config.data.path={corpus}", *TINY, *extra)
  assert r.returncode == 2
  assert expect in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_workdir_of_another_model_is_refused(corpus, tmp_path):
  base = ["train", "--config=configs/gpt_char.py", f"--workdir={tmp_path / 'run'}",
          "--config.data.corpus=text_file", f"--config.data.path={corpus}", *TINY]
  assert llm_jax(*base, "--config.train.max_steps=3").returncode == 0
  r = llm_jax(*base, "--config.model.n_embd=32")
  assert r.returncode == 2 and "config.model.n_embd=32 differs" in r.stderr
  assert "Traceback" not in r.stderr


def test_flag_mistakes_exit_nonzero_without_traceback(tmp_path):
  for args in (["train", "--config=configs/gpt_char.py", f"--workdir={tmp_path}",
                "--config.model.no_such_field=1"],
               ["train", "--config=configs/gpt_char.py", f"--workdir={tmp_path}",
                "--config.model.n_layer=two"],
               ["train", "--config=configs/missing.py", f"--workdir={tmp_path}"],
               ["train", f"--workdir={tmp_path}"],
               ["fly"]):
    r = llm_jax(*args)
    assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr)


# a few of each command's own flags, as --help lists them
OWN_FLAGS = {"train": ["--config", "--workdir"], "generate": ["--workdir", "--prompt", "--top_k"],
             "bpe": ["--corpus", "--vocab_size", "--out"], "evaluate": ["--split", "--beam_size"],
             "sweep": ["--jobs", "--[no]vectorize"], "plot": ["--out"],
             "bench": ["--config", "--steps"]}


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpshort"])
def test_help_on_a_command_lists_its_own_flags_with_defaults_and_exits_0(flag):
  from test_bad_inputs import run_cli
  for name, own in OWN_FLAGS.items():
    code, out, err = run_cli(name, flag)
    assert code == 0 and err == "", (name, err)
    assert out.startswith(f"usage: llm-jax {name} "), out
    for f in own + ["--[no]debug"]:
      assert f"\n  {f} " in out, (name, f, out)
    assert "only_check_args" not in out  # absl's own flags only with --helpfull
  code, out, _ = run_cli("generate", "--workdir=runs/x", "--top_k=3", flag)  # help wins
  assert code == 0
  lines = {l.split()[0]: l for l in out.splitlines() if l.startswith("  --")}
  assert lines["--workdir"].endswith("(required)")
  assert lines["--max_new_tokens"].endswith("(default: 500)")
  assert lines["--prompt"].endswith("(default: '\\n')")
  assert lines["--top_p"].endswith("(default: 1.0)")
  assert lines["--[no]greedy"].endswith("(default: false)")


def test_help_as_a_program_names_the_command_and_helpfull_adds_absls_flags():
  r = llm_jax("evaluate", "-h")
  assert r.returncode == 0 and r.stdout.startswith("usage: llm-jax evaluate "), r.stdout
  assert "__main__" not in r.stdout + r.stderr
  r = llm_jax("plot", "--helpfull")
  assert r.returncode == 0 and "--out" in r.stdout and "only_check_args" in r.stdout
