"""GPT-2 small (124M) pretrained on FineWeb-Edu's sample-10BT with GPT-2's tokenizer: the
headline run of nanoGPT and llm.c, for a machine with accelerators. Prepare the data once (with
network; see the README's "Pretraining on a real corpus"), then train:

    llm-jax prepare --source=hf:HuggingFaceFW/fineweb-edu:sample-10BT --tokenizer=tiktoken:gpt2 \
      --out=data/fineweb_edu_10bt --val=10000
    llm-jax train --config=configs/gpt2_fineweb.py --workdir=runs/gpt2_fineweb

One update sees 524,288 tokens (512 windows of 1024; llm.c's), as 64 windows x 8 accumulated
micro-batches; with 8 devices pass --config.train.batch_size=512 --config.train.grad_accum_steps=1
(batch_size is global). 19,073 updates are one pass over the ~10B tokens.
"""

import os

from llm_jax.fileio import load_python_file

# the model is GPT-2 small's, as configs/gpt2_small.py has it (124M, biases, tanh GELU, tied head,
# the vocabulary padded to 50304)
_SMALL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2_small.py")


def get_config():
  c = load_python_file(_SMALL, _SMALL, "configs/gpt2_small.py is missing").get_config()
  c.data.corpus = "prepared"
  c.data.path = "data/fineweb_edu_10bt"
  c.data.tokenizer = "tiktoken:gpt2"
  # every window of the ~10B tokens once per epoch, in a seeded order
  c.data.sampling = "epoch"
  # nanoGPT's and llm.c's GPT-2 runs multiply in bfloat16 and accumulate in float32, as ours do
  c.model.dtype = "bfloat16"
  t = c.train
  # 64 x 1024 tokens per micro-batch, 8 micro-batches: 524,288 tokens per update
  t.batch_size = 64
  t.grad_accum_steps = 8
  # llm.c's GPT-2 124M on FineWeb 10B: 6e-4 peak after 700 warmup steps, one epoch, AdamW
  # (0.9, 0.95), decay 0.1, clip 1.0; the cosine ends at a tenth of the peak (nanoGPT's)
  t.learning_rate = 6e-4
  t.min_lr = 6e-5
  t.warmup_steps = 700
  t.max_steps = 19073
  t.beta1, t.beta2 = 0.9, 0.95
  t.weight_decay = 0.1
  t.grad_clip = 1.0
  # 20 x 64 val windows (1.3M tokens) every 250 updates
  t.eval_interval = 250
  t.eval_iters = 20
  t.checkpoint_every = 1000
  t.sample_tokens = 200
  return c
