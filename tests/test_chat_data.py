"""Chat data (data/chat.py): the template's loss mask, packing, bad conversations."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax.config import default_config
from llm_jax.data import chat
from llm_jax.data.packing import document_mask
from llm_jax.data.tokenizers import CharTokenizer, tokenizer_from_dict
from llm_jax.errors import UserError
from llm_jax.models import build_model
from llm_jax.training.losses import cross_entropy, make_loss_fn

TOK = chat.ChatTokenizer(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ?!.0123456789+="))
CONVERSATION = [{"role": "system", "content": "be brief."},
                {"role": "user", "content": "2+3=?"},
                {"role": "assistant", "content": "5"},
                {"role": "user", "content": "and 4+4?"},
                {"role": "assistant", "content": "8 it is."}]


def test_the_loss_carrying_tokens_are_the_assistants_content_and_its_end():
  ids, _ = chat.render(TOK, CONVERSATION)
  end, S = TOK.end_id, TOK.special_ids
  enc = lambda s: TOK.encode(s).tolist()
  assert ids.tolist() == ([S["<|system|>"]] + enc("be brief.") + [end] + [S["<|user|>"]] +
                          enc("2+3=?") + [end] + [S["<|assistant|>"]] + enc("5") + [end] +
                          [S["<|user|>"]] + enc("and 4+4?") + [end] + [S["<|assistant|>"]] +
                          enc("8 it is.") + [end])
  batch = chat.to_batch(chat.pack([chat.render(TOK, CONVERSATION)], 64))
  counted = batch["targets"][0][batch["weights"][0] > 0].tolist()
  assert counted == enc("5") + [end] + enc("8 it is.") + [end]
  everything = chat.to_batch(chat.pack([chat.render(TOK, CONVERSATION)], 64), loss_on="all")
  assert everything["weights"].sum() == len(ids) - 1  # every next token of the conversation
  assert TOK.decode(ids) == ("<|system|>be brief.<|end|><|user|>2+3=?<|end|><|assistant|>5"
                             "<|end|><|user|>and 4+4?<|end|><|assistant|>8 it is.<|end|>")


def make(pos="learned"):
  c = default_config().model
  c.update(n_layer=2, n_head=2, n_embd=16, block_size=64, pos=pos)
  m = build_model(c, TOK.vocab_size)
  return m, nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 64), jnp.int32))["params"])


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_packed_rows_give_each_conversation_its_own_logits(pos):
  m, params = make(pos)
  convs = [CONVERSATION, CONVERSATION[1:3], [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello."}]]
  examples = [chat.render(TOK, c) for c in convs]
  packed = chat.pack(examples, 64)
  assert len(packed["tokens"]) == 1  # all three in one row
  batch = chat.to_batch(packed)
  logits = m.apply({"params": params}, batch["inputs"], positions_BT=batch["positions"],
                   mask_BTT=document_mask(batch["segments"]))  # the loss's own mask
  start = 0
  for ids, _ in examples:
    alone = m.apply({"params": params}, ids[None])
    n = min(len(ids), 63 - start)  # the row's inputs: its first 63 tokens
    np.testing.assert_allclose(logits[0, start:start + n], alone[0, :n], atol=1e-5, rtol=1e-5)
    start += len(ids)
  # the masked loss (the loss factory on the packed batch) equals a loss on the counted tokens
  # alone, each conversation read alone
  loss = make_loss_fn(m)(params, {k: jnp.asarray(v) for k, v in batch.items()}, None, False)
  picked = []
  for ids, counted in examples:
    logp = jax.nn.log_softmax(m.apply({"params": params}, ids[None])[0], axis=-1)
    picked += [float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if counted[t]]
  np.testing.assert_allclose(float(loss), -np.mean(picked), rtol=1e-5)
  assert float(loss) != pytest.approx(float(cross_entropy(logits, batch["targets"])))


def test_the_tokenizer_records_its_special_ids():
  d = json.loads(json.dumps(TOK.to_dict()))
  back = tokenizer_from_dict(d)
  assert isinstance(back, chat.ChatTokenizer) and back.special_ids == TOK.special_ids
  assert back.vocab_size == TOK.base.vocab_size + 4 == max(TOK.special_ids.values()) + 1


@pytest.mark.parametrize("line,words", [
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    (b'{"messages": [{"role": "bot", "content": "hi"}]}', "unknown role 'bot'"),
    (b'{"messages": [{"role": "user", "content": "h\xffi"}]}', "line 2 is not UTF-8"),
    (b'{"text": "hi"}', 'no "messages" list'),
    (b'{"messages": [{"role": "assistant", "content": 3}]}', 'without a "content" string'),
    (b'{"messages": [', "line 2 is not JSON"),
])
def test_bad_conversations_are_one_line(tmp_path, line, words):
  good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}'
  path = tmp_path / "chat.jsonl"
  path.write_bytes(good + b"\n" + line + b"\n")
  with pytest.raises(UserError, match=words.replace("(", r"\(")) as e:
    chat.read_conversations(path)
  assert "\n" not in str(e.value)


def test_a_conversation_the_tokenizer_cannot_render_is_one_line():
  with pytest.raises(UserError, match="not in the tokenizer's vocabulary") as e:
    chat.render(TOK, [{"role": "user", "content": "HI"}, {"role": "assistant", "content": "b"}])
  assert "\n" not in str(e.value)


def test_a_prepared_chat_set_gives_the_batches_of_its_jsonl(tmp_path):
  """`llm-jax prepare --format=chat` (JSONL, and Parquet) then data.path=DIR: the same tokenizer,
  training rows and held-out rows as data.path=FILE.jsonl, hence the same losses."""
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from conftest import tiny_config  # noqa: PLC0415
  from llm_jax.training.sft import chat_task  # noqa: PLC0415

  conversations = chat.string_conversations(40, seed=3)
  path = tmp_path / "chat.jsonl"
  chat.write_conversations(path, conversations)
  r = subprocess.run([sys.executable, "-m", "llm_jax", "prepare", "--format=chat",
                      f"--source={path}", "--tokenizer=char", f"--out={tmp_path / 'set'}"],
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa  # noqa: PLC0415
  pq.write_table(pa.table({"messages": conversations}), tmp_path / "chat.parquet")
  chat.prepare_chat(tmp_path / "chat.parquet", chat.load_prepared_chat(tmp_path / "set")[0],
                    tmp_path / "set_parquet")

  def task(data_path):
    c = tiny_config(data_path, batch_size=4)
    c.model.block_size = 32
    c.data.update(corpus="chat", path=str(data_path))
    return chat_task(c)

  ref = task(path)
  for prepared in (tmp_path / "set", tmp_path / "set_parquet"):
    t = task(prepared)
    assert t["tokenizer"].to_dict() == ref["tokenizer"].to_dict()
    for step in (0, 1):
      for k, v in ref["train_batch"](step).items():
        np.testing.assert_array_equal(t["train_batch"](step)[k], v)
    for name in ("train", "val"):
      for k, v in ref["eval_batches"][name].items():
        np.testing.assert_array_equal(t["eval_batches"][name][k], v)
  again = subprocess.run([sys.executable, "-m", "llm_jax", "prepare", "--format=chat",
                          f"--source={path}", "--tokenizer=char", f"--out={tmp_path / 'set'}"],
                         capture_output=True, text=True)
  assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
