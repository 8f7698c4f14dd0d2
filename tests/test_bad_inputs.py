"""Bad input, table-driven: every mistake across train, generate, evaluate, sweep, bpe and plot is
one line `llm-jax <command>: error: ...` naming the field or file, exit code 2, no traceback, and
the checkpoints already in a workdir stay as they were.

The table runs in process through cli.main (its flags are removed again after each call); one
subprocess checks the real exit code and that --debug shows the traceback.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from absl import flags

from conftest import TOY_TEXT, tiny_config
from llm_jax.config import default_config
from llm_jax import cli
from llm_jax.training.loop import train_and_evaluate
from test_faults import files_digest, write_config_file

ROOT = pathlib.Path(__file__).parent.parent


def run_cli(*args):
  """(exit code, stdout, stderr) of `llm-jax *args`, in this process."""
  import contextlib
  import io
  before = set(flags.FLAGS)
  out, err = io.StringIO(), io.StringIO()
  code, argv = 0, sys.argv
  sys.argv = ["llm-jax", *map(str, args)]  # ml_collections reads the config overrides there
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      cli.main(list(sys.argv))
  except SystemExit as e:
    code = e.code or 0
  finally:
    sys.argv = argv
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
  return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Files the table refers to by name: a trained run, its config file, bad data files."""
  d = tmp_path_factory.mktemp("bad_inputs")
  (d / "toy.txt").write_text(TOY_TEXT, encoding="utf-8")
  c = tiny_config(d / "toy.txt", max_steps=4, lr_decay_steps=20, checkpoint_every=2,
                  eval_interval=4, log_interval=2)
  train_and_evaluate(c, str(d / "run"))
  write_config_file(c, d / "config.py")
  (d / "empty.txt").write_text("")
  (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 50)
  (d / "short.txt").write_text("the cat sat.")  # fewer than block_size + 1 = 17 tokens per split
  (d / "other_chars.txt").write_text(TOY_TEXT.upper())  # characters the run's vocabulary lacks
  (d / "a_file").write_text("x")
  (d / "empty_dir").mkdir()
  (d / "no_ckpt").mkdir()
  shutil.copy(d / "run" / "config.json", d / "no_ckpt")
  shutil.copy(d / "run" / "tokenizer.json", d / "no_ckpt")
  # checkpoints of another model under a config.json claiming this one's shapes
  shutil.copytree(d / "run", d / "mismatch")
  saved = json.loads((d / "mismatch" / "config.json").read_text())
  saved["model"]["n_embd"] = 16
  (d / "mismatch" / "config.json").write_text(json.dumps(saved))
  # a seq2seq run's files (its flags are checked before its checkpoint is read)
  (d / "s2s").mkdir()
  s2s = default_config()
  s2s.model.name, s2s.data.task, s2s.data.min_length = "transformer", "reverse", 4
  (d / "s2s" / "config.json").write_text(s2s.to_json())
  shutil.copy(d / "run" / "tokenizer.json", d / "s2s")
  write_new_user_files(d)
  return d


def write_new_user_files(d):
  """The files of the new user's mistakes (issue 37): a Parquet column of integers, experiments
  whose grid or seeds are wrong, a local lm-eval task of six items."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"n": [1, 2, 3], "text": ["a", "b", "c"]}), d / "ints.parquet")
  experiments = {"exp_list": 'grid(["model.n_layer", 1, 2])',
                 "exp_empty_axis": 'grid({"model.n_layer": []})',
                 "exp_typo": 'grid({"model.n_layrs": [1, 2]})'}
  for name, points in {**experiments, "exp_no_seeds": "[{}]"}.items():
    (d / name).mkdir()
    seeds = "[]" if name == "exp_no_seeds" else "[0]"
    (d / name / "experiment.py").write_text(
        f"from llm_jax.sweep import grid\n\ndef get_experiment():\n  return {{'base': "
        f"'{d}/config.py', 'points': {points}, 'seeds': {seeds}}}\n")
  (d / "tasks").mkdir()
  with open(d / "tasks" / "six.jsonl", "w") as f:
    for i in range(6):
      f.write(json.dumps({"ctx": "the cat", "endings": [" sat", " mat"], "label": i % 2}) + "\n")
  (d / "tasks" / "six.yaml").write_text(
      f"task: six\ndataset_path: json\ndataset_kwargs:\n  cache_dir: {d / 'hf_cache'}\n"
      f"  data_files:\n    test: {d / 'tasks' / 'six.jsonl'}\ntest_split: test\n"
      f"output_type: multiple_choice\ndoc_to_text: \"{{{{ctx}}}}\"\ndoc_to_target: label\n"
      f"doc_to_choice: \"{{{{endings}}}}\"\nmetric_list:\n  - metric: acc\n")


T = ["train", "--config={d}/config.py", "--workdir={d}/fresh"]
ON_RUN = ["train", "--config={d}/config.py", "--workdir={d}/run"]
GEN = ["generate", "--workdir={d}/run"]
S2S = ["generate", "--workdir={d}/s2s", "--prompt=abcdef"]
EVAL = ["evaluate", "--workdir={d}/run"]
PREP = ["prepare", "--tokenizer=char", "--workers=0", "--out={d}/prepared"]

# (argv, a part of the one-line message: the field or file it must name)
CASES = [
    # config overrides: wrong types, ranges, unknown fields
    (T + ["--config.model.n_layer=two"], "n_layer"),
    (T + ["--config.train.max_steps=1.5"], "max_steps"),
    (T + ["--config.model.dropout=high"], "dropout"),
    (T + ["--config.model.n_layer=0"], "config.model.n_layer=0 is invalid"),
    (T + ["--config.model.n_head=3"], "config.model.n_embd=32 is invalid"),
    (T + ["--config.model.dropout=1.5"], "config.model.dropout=1.5"),
    (T + ["--config.model.norm=middle"], "config.model.norm='middle'"),
    (T + ["--config.model.pos=rotary"], "config.model.pos='rotary'"),
    (T + ["--config.model.activation=tanh"], "config.model.activation='tanh'"),
    (T + ["--config.model.dtype=float16"], "config.model.dtype='float16'"),
    (T + ["--config.model.name=llama"], "config.model.name='llama'"),
    (T + ["--config.model.block_size=0"], "config.model.block_size=0"),
    (T + ["--config.model.max_len=8"], "config.model.block_size=16"),
    (T + ["--config.model.no_such_field=1"], "no_such_field"),
    (T + ["--config.train.no_such_field=1"], "no_such_field"),
    (T + ["--config.nosection.field=1"], "nosection"),
    (T + ["--config.model.n_layrs=2"],
     "--config.model.n_layrs=2: config.model has no field 'n_layrs'; did you mean "
     "--config.model.n_layer?"),
    (T + ["--config.seed.x=1"], "config.seed is a value, not a section"),
    (T + ["--config.train.batch_size=0"], "config.train.batch_size=0"),
    (T + ["--config.train.batch_size=-4"], "config.train.batch_size=-4"),
    (T + ["--config.train.eval_iters=0"], "config.train.eval_iters=0"),
    (T + ["--config.train.learning_rate=0"], "config.train.learning_rate=0"),
    (T + ["--config.train.min_lr=1.0"], "config.train.min_lr=1.0"),
    (T + ["--config.train.beta2=1.0"], "config.train.beta2=1.0"),
    (T + ["--config.train.grad_clip=-1.0"], "config.train.grad_clip=-1.0"),
    (T + ["--config.train.warmup_steps=50"], "config.train.lr_decay_steps=20"),
    (T + ["--config.train.nan_policy=ignore"], "config.train.nan_policy='ignore'"),
    (T + ["--config.parallel=tpu"], "config.parallel='tpu'"),
    (T + ["--config.distributed.num_processes=0"], "config.distributed.num_processes=0"),
    (T + ["--config.data.task=reverse"], "config.data.task='reverse'"),
    (T + ["--config.data.corpus=wikipedia"], "config.data.corpus='wikipedia'"),
    (T + ["--config.data.tokenizer=sentencepiece"], "config.data.tokenizer='sentencepiece'"),
    (T + ["--config.data.normalize=NFX"], "config.data.normalize='NFX'"),
    (T + ["--config.data.tokenizer=tiktoken:nope"], "config.data.tokenizer='tiktoken:nope'"),
    (T + ["--config.data.tokenizer=bpe:/nonexistent/r.tiktoken"], "/nonexistent/r.tiktoken"),
    # data files: missing, empty, not UTF-8, too short, a directory
    (T + ["--config.data.path=/nonexistent/*.txt"], "/nonexistent/*.txt"),
    (T + ["--config.data.path={d}/empty.txt"], "empty.txt"),
    (T + ["--config.data.path={d}/latin1.txt"], "latin1.txt is not UTF-8"),
    (T + ["--config.data.path={d}/short.txt"], "fewer than model.block_size + 1"),
    (T + ["--config.data.path={d}/empty_dir"], "empty_dir"),
    # the config file and the workdir
    (["train", "--config=/nonexistent/config.py", "--workdir={d}/fresh"], "/nonexistent/config.py"),
    (["train", "--config={d}/missing.py", "--workdir={d}/fresh"],
     "--config={d}/missing.py does not exist: pass a config file"),
    (["train", "--config={d}/toy.txt", "--workdir={d}/fresh"], "--config={d}/toy.txt failed to load"),
    (["bench", "--config={d}/empty_dir"], "--config={d}/empty_dir is not a file"),
    (["train", "--config={d}/config.py", "--workdir={d}/a_file"], "a_file is a file, not a run"),
    (["train", "--config={d}/config.py"], "workdir"),
    (["train", "--config={d}/config.py", "--workdir={d}/a_file/run"], "a_file/run is not writable"),
    (ON_RUN + ["--config.model.n_embd=16", "--config.model.n_head=2"],
     "config.model.n_embd=16 differs"),
    (ON_RUN + ["--config.data.tokenizer=tiktoken:cl100k_base"], "config.data.tokenizer"),
    (ON_RUN + ["--config.data.normalize=none"], "config.data.normalize='none' differs"),
    (["train", "--config={d}/config.py", "--workdir={d}/mismatch", "--config.model.n_embd=16"],
     "holds another model"),
    (ON_RUN + ["--config.data.path={d}/other_chars.txt", "--config.train.max_steps=6"],
     "is not in the"),
    # generate: the run, the prompt, sampling settings
    (["generate", "--workdir=/nonexistent/run"], "--workdir=/nonexistent/run does not exist"),
    (["generate", "--workdir={d}/empty_dir"], "holds no training run"),
    (["generate", "--workdir={d}/a_file"], "a_file is a file, not a run directory"),
    (GEN + ["ROMEO"], "unexpected arguments ['ROMEO']"),
    (["generate", "--workdir={d}/no_ckpt"], "has no checkpoint"),
    (["generate", "--workdir={d}/mismatch"], "holds another model"),
    (GEN + ["--prompt=\u20ac"], "not in the"),
    (GEN + ["--prompt="], "--prompt is empty"),
    (GEN + ["--prompt_file=/nonexistent/p.txt"], "/nonexistent/p.txt"),
    (GEN + ["--prompt_file={d}/latin1.txt"], "latin1.txt is not UTF-8"),
    (GEN + ["--temperature=-1"], "--temperature=-1"),
    (GEN + ["--top_k=-1"], "--top_k=-1"),
    (GEN + ["--top_k=1000"], "--top_k=1000"),
    (GEN + ["--top_p=0"], "--top_p=0"),
    (GEN + ["--top_p=1.5"], "--top_p=1.5"),
    (GEN + ["--max_new_tokens=0"], "--max_new_tokens=0"),
    (GEN + ["--max_new_tokens=many"], "max_new_tokens"),
    (GEN + ["--num_samples=0"], "--num_samples=0"),
    (GEN + ["--step=3"], "--step=3 was not saved"),
    (GEN + ["--tempreature=0.5"], "tempreature"),
    (GEN + ["--prompt=ROMEO\udcff"], "--prompt is not UTF-8 text (b'--prompt=ROMEO\\xff')"),
    (GEN + ["--prompt=the", "--prompt_file={d}/toy.txt"], "--prompt and --prompt_file"),
    (GEN + ["--max_new_tokens=100000000000"], "positions decoding counts"),
    (GEN + ["--max_new_tokens=2000000000", "--num_samples=64"], "GiB of"),
    (GEN + ["--stream", "--num_samples=2"], "--stream prints one"),
    (S2S + ["--top_k=5"], "--top_k: model 'transformer' decodes its one output greedily"),
    (S2S + ["--num_samples=2", "--temperature=0.5"], "--num_samples, --temperature: model"),
    (S2S + ["--stream"], "--stream"),
    (["generate", "--workdir={d}/s2s", "--prompt=ab"], "fewer than any source"),
    (["generate"], "workdir"),
    # evaluate
    (["evaluate", "--workdir=/nonexistent/run"], "/nonexistent/run"),
    (EVAL + ["--split=train"], "split"),
    (EVAL + ["--split=test"], "--split=test"),
    (EVAL + ["--beam_size=0"], "--beam_size=0"),
    (EVAL + ["--beam_size=4"], "--beam_size=4"),
    (EVAL + ["--alpha=-1"], "--alpha=-1"),
    (EVAL + ["--step=99"], "--step=99"),
    # bpe
    (["bpe", "--corpus={d}/toy.txt", "--vocab_size=10", "--out={d}/r.tiktoken"], "--vocab_size=10"),
    (["bpe", "--corpus=/nonexistent/*.txt", "--vocab_size=300", "--out={d}/r.tiktoken"],
     "/nonexistent/*.txt"),
    (["bpe", "--corpus={d}/empty.txt", "--vocab_size=300", "--out={d}/r.tiktoken"], "empty.txt"),
    (["bpe", "--corpus={d}/latin1.txt", "--vocab_size=300", "--out={d}/r.tiktoken"], "latin1.txt"),
    (["bpe", "--corpus={d}/toy.txt", "--vocab_size=300", "--out={d}/empty_dir"], "empty_dir"),
    (["bpe", "--corpus={d}/toy.txt", "--vocab_size=300"], "out"),
    # sweep
    (["sweep"], "experiment"),
    (["sweep", "{d}/nonexistent_experiment"], "nonexistent_experiment"),
    (["sweep", "{d}/x", "--slurm_partition=gpu"], "--slurm_partition: for --launcher=submitit"),
    (["sweep", "{d}/x", "--launcher=submitit", "--slurm_additional=qos"], "'qos' is not key=value"),
    (["sweep", "{d}/x", "--launcher=submitit", "--slurm_time=0"], "--slurm_time=0 is invalid"),
    # plot
    (["plot", "{d}/nonexistent_run"], "nonexistent_run"),
    (["plot", "{d}/empty_dir"], "empty_dir has no metrics.jsonl"),
    (["plot"], "no run to plot"),
    (["plot", "{d}/run", "--out={d}/nonexistent_dir/curves.png"], "nonexistent_dir/curves.png"),
    (["plot", "{d}/run", "--out={d}/c.txt"], "matplotlib cannot write a .txt file"),
    (["plot", "{d}/run", "--out="], "--out is empty"),
    (["export", "--workdir={d}/run", "--to="], "--to is empty"),
    (["train", "--config={d}/config.py", "--workdir= "], "--workdir is empty"),
    (["plot", "{d}/run", ""], "an argument is empty"),
    (["bpe", "--corpus={d}/toy.txt", "--vocab_size=300", "--out={d}/" + "x" * 300],
     "--out has a file name longer than 255 bytes"),
    (["bench", "--config={d}/config.py", "--vocab_size=0"], "--vocab_size=0 is invalid"),
    (["bench", "--config={d}/config.py", "--decode_tokens=-1"], "--decode_tokens=-1 is invalid"),
    # a flag that is a config field; fine-tuning's context length, advised one way
    (T + ["--max_steps=10"], "a config field is set as --config.train.max_steps=value"),
    (T + ["--config.train.init_from={d}/run", "--config.model.block_size=32",
          "--config.model.max_len=16"], "lower block_size (a fine-tuned model keeps"),
    (T + ["--config.train.init_from={d}/run", "--config.model.block_size=32"],
     "set --config.model.max_len=16 (its positional table) and a block_size of at most 16"),
    # the command itself
    (["fly"], "unknown command 'fly'"),
    # a new user's list (issue 37): each was a traceback, silently wrong or awkward
    (T + ["--config.seed=-1"], "config.seed=-1 is invalid: use a non-negative"),
    (T + ["--config.model.name=bigram", "--config.train.optimizer=muon"],
     "config.train.optimizer='muon' is invalid: model 'bigram' cannot train with it"),
    (T + ["--config.model.scan_layers=maybe"],
     "--config.model.scan_layers=maybe: 'maybe' is not a boolean: use true or false"),
    (ON_RUN + ["--config.train.optimizer=lion"],
     "config.train.optimizer='lion': the run was trained with optimizer 'adamw'"),
    (ON_RUN + ["--config.train.grad_clip=0"], "the run was trained with grad_clip=1.0"),
    (PREP + ["--source={d}/ints.parquet", "--text_field=n"],
     "column 'n' holds int values, not text"),
    (PREP + ["--source={d}/toy.txt", "--separator=\\q\\x"],
     "--separator='\\\\q\\\\x' has a broken escape"),
    (PREP + ["--source={d}/toy.txt", "--separator=\u00a7"], "--separator='\u00a7' was found in no file"),
    (PREP + ["--source={d}/toy.txt", "--tokenizer=bpe:train:300", "--bpe_sample_bytes=0"],
     "--bpe_sample_bytes=0 is invalid"),
    (PREP + ["--source={d}/empty_dir"],
     "--source={d}/empty_dir is a folder: pass a glob of its files, such as "
     "--source='{d}/empty_dir/*.txt'"),
    (["sweep", "{d}/exp_list"], "grid() takes a dict {field: [values, ...]}, not a list"),
    (["sweep", "{d}/exp_empty_axis"], "grid(): 'model.n_layer' takes a non-empty list"),
    (["sweep", "{d}/exp_no_seeds"], "seeds=[]: give a non-empty list"),
    (["sweep", "{d}/exp_typo"], "'model.n_layrs' is not a config field: did you mean "
                                "'model.n_layer'?"),
    (["harness", "--workdir={d}/run", "--tasks=hellaswag"],
     "the Hugging Face Hub (127.0.0.1) cannot be reached"),
    (["harness", "--workdir={d}/run", "--tasks=six", "--include_path={d}/tasks",
      "--num_fewshot=100"], "--num_fewshot=100 is more than a task of six has examples"),
]


def test_every_bad_input_is_one_clear_line_and_exit_2(env, monkeypatch):
  from llm_jax import harness
  # no network, whatever this machine has: the Hub's address is a closed local port
  monkeypatch.setattr(harness, "HUB", ("127.0.0.1", 9))
  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    monkeypatch.delenv(name, raising=False)
  before = {w: files_digest(env / w / "checkpoints") for w in ("run", "mismatch")}
  failures = []
  for argv, expect in CASES:
    argv = [a.replace("{d}", str(env)) for a in argv]
    code, out, err = run_cli(*argv)
    # (lm-eval's progress bars, redrawn with \r, are not lines of the message)
    lines = [l for l in err.strip().split("\n") if "\r" not in l]
    prog = "llm-jax" if argv[0] == "fly" else f"llm-jax {argv[0]}"
    ok = (code == 2 and len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and
          expect.replace("{d}", str(env)) in lines[0] and "Traceback" not in err)
    if not ok:
      failures.append(f"{argv}: exit {code}, stderr {err!r}")
  clean = len(CASES) - len(failures)
  print(f"{clean} of {len(CASES)} bad inputs gave a clean one-line error")
  assert not failures, "\n".join(failures)
  assert len(CASES) >= 40
  # no bad input touched the checkpoints already there
  assert {w: files_digest(env / w / "checkpoints") for w in ("run", "mismatch")} == before


def test_the_exit_code_is_real_and_debug_shows_the_traceback(env):
  base = [sys.executable, "-m", "llm_jax", "generate", f"--workdir={env}/run", "--top_p=0"]
  r = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
  r = subprocess.run(base + ["--debug"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_no_user_file_is_unpickled():
  """np.load and friends are called without pickle; nothing imports pickle."""
  for path in (ROOT / "llm_jax").rglob("*.py"):
    text = path.read_text()
    assert not re.search(r"\bimport (c?pickle|joblib|dill)\b|torch\.load", text), path
    for call in re.findall(r"np\.load\([^)]*\)", text):
      assert "allow_pickle=False" in call, (path, call)


def test_failed_commands_leave_no_new_folder_and_never_touch_an_existing_one(env, tmp_path):
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("mine")
  before = files_digest(existing)
  no_hf = tmp_path / "no_hf"
  no_hf.mkdir()
  failing = [  # (argv, the folder it names)
      (["train", f"--config={env}/config.py", "--config.data.path=/nonexistent.txt"], "workdir"),
      (["train", f"--config={env}/config.py", f"--config.train.init_from={env}/empty_dir"],
       "workdir"),
      (["train", f"--config={env}/config.py", f"--config.data.path={env}/latin1.txt"], "workdir"),
      (["convert", f"--from={no_hf}"], "workdir"),
      (["export", f"--workdir={env}/run", "--step=3"], "to"),
  ]
  for argv, flag in failing:
    for folder in (tmp_path / "new" / "deeper", existing):
      code, _, err = run_cli(*argv, f"--{flag}={folder}")
      assert code == 2 and "Traceback" not in err, (argv, err)
      assert not (tmp_path / "new").exists(), argv
      assert files_digest(existing) == before and os.listdir(existing) == ["notes.txt"], argv


def test_help_and_version():
  code, out, _ = run_cli("help", "train")
  assert code == 0 and out.startswith("usage: llm-jax train") and "--workdir" in out
  code, out, _ = run_cli("--version")
  assert code == 0 and re.fullmatch(r"llm-jax \d+\.\d+\.\d+\S*\n", out)
  for command in cli.COMMANDS:
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and not [l for l in out.splitlines() if l.count("(default") > 1], command
  code, out, _ = run_cli("generate", "--help")
  prompt = next(l for l in out.splitlines() if l.strip().startswith("--prompt "))
  assert prompt.count("default") == 1


def test_generate_streams_the_same_sample_token_by_token(env):
  from llm_jax.generate import generate_text
  pieces = []
  streamed = generate_text(env / "run", "the", 12, seed=3, on_text=pieces.append)
  assert len(pieces) == 12 and "".join(pieces) == streamed[0]  # char tokens: one piece each
  assert generate_text(env / "run", "the", 12, seed=3) == streamed
  code, out, err = run_cli("generate", f"--workdir={env}/run", "--prompt=the", "--seed=3",
                           "--max_new_tokens=12", "--stream")
  assert code == 0 and out == "the" + streamed[0] + "\n", err


def test_train_goes_on_when_its_output_pipe_closes(env, tmp_path):
  """`llm-jax train ... | head -1`: the reader leaves after one line; the run trains to its end."""
  shutil.copytree(env / "run", tmp_path / "run")
  p = subprocess.Popen([sys.executable, "-m", "llm_jax", "train", f"--config={env}/config.py",
                        f"--workdir={tmp_path}/run", "--config.train.max_steps=6"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert p.stdout.readline().startswith("llm-jax: gpt")
  p.stdout.close()
  err = p.stderr.read()
  assert p.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 6


def test_a_long_generate_shows_its_progress_on_stderr(env, monkeypatch):
  """`generate --max_new_tokens=1000000` printed nothing for minutes: a long generation reports
  its tokens on stderr (here no terminal: a line every PROGRESS_SECONDS, and one at the end), and
  draws the same sample as without the report."""
  from llm_jax import generate
  from llm_jax.generate import generate_text
  monkeypatch.setattr(generate, "PROGRESS_TOKENS", 300)
  monkeypatch.setattr(generate, "PROGRESS_SECONDS", 0.0)  # a line at every token
  code, out, err = run_cli("generate", f"--workdir={env}/run", "--prompt=the", "--seed=1",
                           "--max_new_tokens=300")
  lines = err.strip().splitlines()
  assert code == 0 and len(lines) == 300, err[-500:]
  assert lines[0].startswith("llm-jax generate: 1 of 300 tokens (")
  assert lines[-1].startswith("llm-jax generate: 300 of 300 tokens (") and lines[-1].endswith(
      " 0s left)")
  monkeypatch.setattr(generate, "PROGRESS_TOKENS", 301)
  assert out == "the" + generate_text(env / "run", "the", 300, seed=1)[0] + "\n"
