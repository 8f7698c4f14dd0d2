"""SFT (training/sft.py) from a pretrained run, and `llm-jax chat` on the result."""

import io
import json
import subprocess
import sys

import jax
import pytest

from conftest import TOY_TEXT, tiny_config
from llm_jax import convert
from llm_jax.chat import chat_from_run, run_chat
from llm_jax.data.chat import (ChatTokenizer, read_conversations, render, string_conversations,
                               write_conversations)
from llm_jax.decoding import generate_batch
from llm_jax.errors import UserError
from llm_jax.training.loop import train_and_evaluate
from llm_jax.training.sft import answer_exact_match, split_conversations
from llm_jax.training.workdir import load_run

LETTERS = "acdeghilmnorst"  # letters of the toy text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(pretrained run, its SFT run, the conversations file): a tiny GPT pretrained on the toy text
  with 8 spare embedding rows, then fine-tuned on generated string conversations."""
  tmp = tmp_path_factory.mktemp("sft")
  (tmp / "toy.txt").write_text(TOY_TEXT)
  base = tiny_config(tmp / "toy.txt", max_steps=10, checkpoint_every=10, eval_interval=10)
  base.model.update(vocab_size=32, block_size=32, n_embd=64, n_head=4)
  train_and_evaluate(base, str(tmp / "base"))
  path = tmp / "chat.jsonl"
  write_conversations(path, string_conversations(600, seed=1, tasks=("first", "last", "echo"),
                                                 letters=LETTERS, min_len=2, max_len=3,
                                                 system_share=0.0))
  sft = tiny_config(tmp / "toy.txt", max_steps=400, checkpoint_every=400, eval_interval=400,
                    lr_decay_steps=400, learning_rate=3e-3, min_lr=3e-4, warmup_steps=20,
                    batch_size=16,
                    init_from=str(tmp / "base"))
  sft.model.update(vocab_size=32, block_size=32, n_embd=64, n_head=4)
  sft.data.update(corpus="chat", path=str(path))
  train_and_evaluate(sft, str(tmp / "sft"))
  return tmp / "base", tmp / "sft", path


def held_out(path):
  conversations = read_conversations(path)
  return [conversations[i] for i in split_conversations(len(conversations), 0)[1]]


def exact_match(run, conversations):
  config, tok, model, params, _ = load_run(run)
  return answer_exact_match(model, params, ChatTokenizer(tok), conversations,
                            config.model.block_size)


def test_sft_raises_held_out_exact_match_and_records_the_template(runs):
  base, sft, path = runs
  conversations = held_out(path)
  before, after = exact_match(base, conversations), exact_match(sft, conversations)
  assert before < 0.1 and after > 0.5, (before, after)
  saved = json.loads((sft / "tokenizer.json").read_text())
  assert saved["kind"] == "chat" and saved["special_ids"]["<|end|>"] == saved["special_ids"][
      "<|system|>"] + 3
  assert isinstance(load_run(sft)[1], ChatTokenizer)


def test_chat_keeps_the_conversation_in_the_cache_and_resets(runs):
  _, sft, _ = runs
  session = chat_from_run(sft, max_new_tokens=6)
  streamed = []
  first = session.say("echo tea", on_text=streamed.append)
  assert "".join(streamed) == first and len(streamed) >= 1
  second = session.say("first ice")
  user_tokens = len(render(session.tok, [{"role": "user", "content": "first ice"}], True)[0])
  assert session.prefilled == [session.prefilled[0], user_tokens]  # only the new turn's tokens
  # the second reply is what a fresh decoding of the whole conversation gives
  ids = render(session.tok, session.messages[:-1], add_generation_prompt=True)[0]
  alone = generate_batch(session.model, session.params, [ids.tolist()], jax.random.key(0),
                         block_size=32, max_new_tokens=6, temperature=0,
                         eos_id=session.tok.end_id)[0]
  assert second == session.tok.decode_text(alone.tokens)
  session.reset()
  assert session.say("echo tea") == first and session.cached == session.prefilled[0] + len(
      session.tok.encode(first)) + 1


def test_the_chat_command_reads_stdin(runs):
  _, sft, _ = runs
  session = chat_from_run(sft, max_new_tokens=6)
  out = io.StringIO()
  run_chat(session, io.StringIO("echo tea\n/reset\necho tea\n/system answer.\nlast mat\n/quit\n"
                                "never read\n"), out)
  lines = out.getvalue().splitlines()
  assert len(lines) == 5 and lines[1] == "[conversation reset]"
  assert lines[3].startswith("[system message set")
  assert lines[0] == lines[2]  # the same first turn after /reset
  r = subprocess.run([sys.executable, "-m", "llm_jax", "chat", f"--workdir={sft}",
                      "--max_new_tokens=6"], input="echo tea\n/reset\necho tea\n/quit\n",
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines() == [lines[0], "[conversation reset]", lines[0]]
  bad = subprocess.run([sys.executable, "-m", "llm_jax", "chat", f"--workdir={runs[0]}"],
                       input="hi\n", capture_output=True, text=True)
  assert bad.returncode == 2 and "not trained on conversations" in bad.stderr
  assert len(bad.stderr.strip().splitlines()) == 1


def test_an_exported_sft_run_renders_as_transformers_and_converts_back(runs, tmp_path):
  """export writes the chat template transformers renders (ids equal to llm-jax's), and convert
  reads it back: the same special ids, ids and loss masks; a template that cannot render a
  conversation is one line."""
  transformers = pytest.importorskip("transformers")
  _, sft, path = runs
  out = convert.export(sft, tmp_path / "hf")
  assert out["chat_template"] and out["tokenizer"] == "tokenizer.json"
  hf_tok = transformers.AutoTokenizer.from_pretrained(out["out"])
  tok = load_run(sft)[1]
  conversations = read_conversations(path)[:3] + [[
      {"role": "system", "content": "answer."}, {"role": "user", "content": "echo tea"},
      {"role": "assistant", "content": "tea"}, {"role": "user", "content": "last ice"},
      {"role": "assistant", "content": "e"}]]
  for c in conversations:
    for messages, prompt in ((c, False), (c[:-1], True)):
      theirs = hf_tok.apply_chat_template(messages, add_generation_prompt=prompt,
                                          return_dict=False)
      assert render(tok, messages, prompt)[0].tolist() == list(theirs)
  back = convert.convert(out["out"], tmp_path / "back")
  assert back["tokenizer"].startswith("hf:")
  tok_back = load_run(tmp_path / "back")[1]
  assert isinstance(tok_back, ChatTokenizer) and tok_back.template is not None
  assert tok_back.special_ids == tok.special_ids and tok_back.end_id == tok.end_id
  for c in conversations:
    ids, loss = render(tok, c)
    ids_back, loss_back = render(tok_back, c)
    assert ids_back.tolist() == ids.tolist() and loss_back.tolist() == loss.tolist()
    assert tok_back.decode_text(ids) == tok.decode_text(ids)
  # templates the conversation cannot go through: one line each
  for template in ("{% for m in %}",
                   "{{ raise_exception('System role not supported') }}",
                   "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"):
    with pytest.raises(UserError) as e:
      render(ChatTokenizer(tok_back.base, template, {"eos_token": "<|end|>"}), conversations[0])
    assert len(str(e.value).splitlines()) == 1
