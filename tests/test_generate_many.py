"""`llm-jax generate --prompts=FILE`: many prompts through the batched engine, JSONL out."""

import json
import subprocess
import sys

import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax.errors import UserError
from llm_jax.generate import generate_many, generate_text, read_prompts
from llm_jax.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("many")
  (tmp / "toy.txt").write_text(TOY_TEXT)
  train_and_evaluate(tiny_config(tmp / "toy.txt", max_steps=4, checkpoint_every=4,
                                 eval_interval=4), str(tmp / "run"))
  return tmp / "run"


PROMPTS = ["the cat", "a", "the dog sat on t", "a fish swam"]


def test_the_command_writes_one_line_per_prompt_in_order_as_each_alone(run, tmp_path):
  jsonl = tmp_path / "prompts.jsonl"
  jsonl.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  out = tmp_path / "out.jsonl"
  r = subprocess.run([sys.executable, "-m", "llm_jax", "generate", f"--workdir={run}",
                      f"--prompts={jsonl}", f"--output={out}", "--temperature=0",
                      "--max_new_tokens=6"], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [rec["prompt"] for rec in records] == PROMPTS
  for rec in records:  # the single-prompt path's greedy text, exactly
    assert rec["completion"] == generate_text(run, rec["prompt"], max_new_tokens=6,
                                              greedy=True)[0]
  # a text file, one prompt a line, gives the same records
  text = tmp_path / "prompts.txt"
  text.write_text("\n".join(PROMPTS) + "\n")
  assert read_prompts(text) == PROMPTS
  assert generate_many(run, read_prompts(text), max_new_tokens=6, greedy=True) == records


def test_bad_prompt_files_are_one_line(run, tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  binary = tmp_path / "bad.txt"
  binary.write_bytes(b"the \xff\xfe cat\n")
  no_prompt = tmp_path / "x.jsonl"
  no_prompt.write_text('{"text": "the"}\n')
  for path, words in ((empty, "holds no prompt"), (binary, "not UTF-8"),
                      (no_prompt, 'no "prompt"')):
    with pytest.raises(UserError, match=words) as e:
      read_prompts(path)
    assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="more than model.block_size=16") as e:
    generate_many(run, ["the cat sat on the mat. the dog"], max_new_tokens=4)
  assert "\n" not in str(e.value)
