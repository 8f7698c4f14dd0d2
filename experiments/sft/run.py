"""SFT on generated string tasks (configs/sft_strings.py): held-out exact match before and after.

    python experiments/sft/run.py --out=/tmp/sft [--pretrain_steps=500] [--sft_steps=600]

1. Pretrains configs/gpt_char_baby.py (4 layers, 128 wide, 64 characters of context) on the plays
   for --pretrain_steps, with model.vocab_size=128 (room for the chat specials).
2. Measures the held-out exact match of that model on the conversations' last assistant answers
   (training/sft.py answer_exact_match: greedy through the engine, up to <|end|>).
3. Fine-tunes it with configs/sft_strings.py for --sft_steps, and measures again. Prints JSON.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name, *args):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def exact_match(run, conversations):
  from llm_jax.data.chat import ChatTokenizer
  from llm_jax.training.sft import answer_exact_match
  from llm_jax.training.workdir import load_run
  config, tok, model, params, _ = load_run(run)
  return answer_exact_match(model, params, ChatTokenizer(tok), conversations,
                            config.model.block_size)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True)
  ap.add_argument("--pretrain_steps", type=int, default=500)
  ap.add_argument("--sft_steps", type=int, default=600)
  args = ap.parse_args()
  sys.path.insert(0, ROOT)
  from llm_jax.data.chat import read_conversations
  from llm_jax.training.loop import train_and_evaluate
  from llm_jax.training.sft import split_conversations
  base, sft = os.path.join(args.out, "base"), os.path.join(args.out, "sft")
  t = time.time()
  c = load_config("gpt_char_baby")
  c.model.vocab_size = 128
  c.train.update(max_steps=args.pretrain_steps, eval_interval=args.pretrain_steps,
                 checkpoint_every=args.pretrain_steps, sample_tokens=0)
  train_and_evaluate(c, base)
  pretrain_s = time.time() - t
  s = load_config("sft_strings", base)
  s.train.update(max_steps=args.sft_steps, eval_interval=args.sft_steps,
                 checkpoint_every=args.sft_steps)
  conversations = read_conversations(s.data.path)
  _, held = split_conversations(len(conversations), s.seed)
  held_out = [conversations[i] for i in held]
  before = exact_match(base, held_out)
  t = time.time()
  train_and_evaluate(s, sft)
  sft_s = time.time() - t
  after = exact_match(sft, held_out)
  by_task = {}
  for task in ("reverse", "echo", "first", "last"):
    mine = [c for c in held_out if c[-2]["content"].startswith(task + " ")]
    by_task[task] = exact_match(sft, mine)
  print(json.dumps({"held_out": len(held_out), "exact_match_before": before,
                    "exact_match_after": after, "after_by_task": by_task,
                    "pretrain_steps": args.pretrain_steps, "sft_steps": args.sft_steps,
                    "pretrain_s": pretrain_s, "sft_s": sft_s}, indent=1))


if __name__ == "__main__":
  main()
