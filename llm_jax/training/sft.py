"""Supervised fine-tuning on conversations: the task of `config.data.corpus='chat'`.

    llm-jax train --config=configs/sft_strings.py --workdir=runs/sft

The conversations (a JSONL of {"messages": [...]}, data/chat.py, or a set that `llm-jax prepare
--format=chat` rendered once: data.path its directory) are rendered with the chat template, a
tenth of them (at least one) held out for validation in a seeded order, and each set packed into
rows of block_size + 1 tokens (whole conversations, each its own positions and
attention). A step's rows are drawn from (seed, step), as the other corpora's windows. The loss
counts the assistant's tokens (data.loss_on='assistant') or every token ('all').

The tokenizer is the run's (or, fine-tuning with train.init_from, the source run's) plus the
template's special ids (data/chat.py ChatTokenizer): a model fine-tuned from a pretrained run needs
embedding rows for them, model.vocab_size >= the base vocabulary + 4 (pretrain with room, such as
a multiple of 64).

`answer_exact_match`: the share of conversations whose last assistant message the model
reproduces exactly, greedily, from the conversation before it (the batched engine).
"""

import math

import jax
import numpy as np

from llm_jax.data.chat import (ChatTokenizer, is_prepared_chat, load_prepared_chat, pack,
                               read_conversations, render, to_batch)
# a step's rows and the evaluation rows come from independent streams of one seed
from llm_jax.data.prepared import EVAL_STREAM, TRAIN_STREAM
from llm_jax.data.tokenizers import make_tokenizer, normalization_of, normalize, tokenizer_id
from llm_jax.decoding import generate_batch
from llm_jax.errors import UserError
from llm_jax.models import build_model



def split_conversations(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, held-out indices): a tenth (at least one) held out, in a seeded order."""
  order = np.random.default_rng([seed, 7]).permutation(n)
  n_val = max(1, n // 10)
  return order[n_val:], order[:n_val]


def chat_tokenizer(config, conversations, tokenizer=None) -> ChatTokenizer:
  """The run's tokenizer (a resumed or init_from run's) with the chat specials; else one built from
  config.data.tokenizer on the conversations' text."""
  if tokenizer is None:
    d = config.data
    form = normalization_of(d.normalize, d.tokenizer)
    text = normalize("".join(m["content"] for c in conversations for m in c), form)
    tokenizer = make_tokenizer(d.tokenizer, text, d.data_dir, form)
  return ChatTokenizer(tokenizer)


def rows_of(arrays: dict, batch_shape, seed: int, step: int, stream: int) -> dict:
  n = len(arrays["inputs"])
  r = np.random.default_rng([seed, stream, step]).integers(0, n, int(np.prod(batch_shape)))
  return {k: v[r].reshape(*batch_shape, v.shape[-1]) for k, v in arrays.items()}


def chat_task(config, tokenizer=None) -> dict:
  """The fields of the run's tasks.Task but its sampler (tasks.lm_task adds it)."""
  tc, d, T = config.train, config.data, config.model.block_size
  if is_prepared_chat(d.path):  # `llm-jax prepare --format=chat`: rendered once, by its tokenizer
    tok, examples = load_prepared_chat(d.path)
    run_tok = None if tokenizer is None else ChatTokenizer(tokenizer)
    if run_tok is not None and (tokenizer_id(run_tok.base), run_tok.template) != (
        tokenizer_id(tok.base), tok.template):
      raise UserError(f"config.data.path={d.path!r} was prepared with another tokenizer than "
                      f"the run's ({tokenizer.kind}): prepare it with --tokenizer=run:<the run's "
                      f"workdir>")
  else:
    conversations = read_conversations(d.path)
    tok = chat_tokenizer(config, conversations, tokenizer)
    examples = [render(tok, c) for c in conversations]
  if len(examples) < 2:
    raise UserError(f"config.data.path={d.path!r} holds {len(examples)} conversation: give "
                    f"at least 2 (a tenth is held out for validation)")
  train_idx, val_idx = split_conversations(len(examples), config.seed)
  arrays = {name: to_batch(pack(examples, T + 1, idx), d.loss_on)
            for name, idx in (("train", train_idx), ("val", val_idx))}
  model = build_model(config.model, tok.vocab_size, train_config=config.train)
  eval_shape = (tc.eval_iters, tc.batch_size)
  counted = sum(int(a["weights"].sum()) for a in arrays.values())
  return dict(
      tokenizer=tok, model=model, input_keys=("inputs",),
      train_batch=lambda step: rows_of(arrays["train"], (tc.grad_accum_steps, tc.batch_size),
                                       config.seed, step, TRAIN_STREAM),
      eval_batches={name: rows_of(arrays[name], eval_shape, config.seed, i, EVAL_STREAM)
                    for i, name in enumerate(("train", "val"))},
      eval_metrics=lambda params, losses: {},
      summary_line=f"chat {d.path}: {len(train_idx):,} train / {len(val_idx):,} held-out "
                   f"conversations in {len(arrays['train']['inputs']):,} / "
                   f"{len(arrays['val']['inputs']):,} packed rows, vocab {tok.vocab_size} "
                   f"(4 chat specials), {counted:,} tokens carry loss (data.loss_on="
                   f"{d.loss_on})",
      tokens_per_example=T)


def answer_prompts(tok: ChatTokenizer, conversations, block_size: int):
  """(prompt ids, the last assistant message's text) of each conversation: the prompt is the
  conversation before that message, ending in <|assistant|> (cut from the left to fit)."""
  out = []
  for c in conversations:
    last = max(i for i, m in enumerate(c) if m["role"] == "assistant")
    ids, _ = render(tok, c[:last], add_generation_prompt=True)
    out.append((ids[-block_size:].tolist(), c[last]["content"]))
  return out


def answer_exact_match(model, params, tok: ChatTokenizer, conversations, block_size: int,
                       max_new_tokens: int = 32, max_batch: int = 64) -> float:
  """The share of conversations whose last assistant message the model says exactly (greedy,
  up to its <|end|>)."""
  pairs = answer_prompts(tok, conversations, block_size)
  out = generate_batch(model, params, [p for p, _ in pairs], jax.random.key(0),
                       block_size=block_size, max_new_tokens=max_new_tokens, temperature=0,
                       eos_id=tok.end_id, max_batch=max_batch)
  hits = [c.finish_reason == "stop" and tok.decode_text(c.tokens[:-1]) == answer
          for c, (_, answer) in zip(out, pairs)]
  return float(np.mean(hits)) if hits else math.nan
