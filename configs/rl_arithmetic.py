"""GRPO on arithmetic word problems, from scratch on a CPU in minutes (docs/rl.md):

  llm-jax rl --config=configs/rl_arithmetic.py --workdir=runs/rl_arith

A 0.1M-parameter character GPT first learns the answer format in rl.sft_steps supervised steps
on the task's demonstrations ("Ann has 3 pens and gets 4 more. How many? 7\\n", operands 0-4),
which leaves it right on about 70% of its samples; then train.max_steps GRPO steps (8 prompts x 8
samples, an exact-answer reward) raise its mean reward (to about 0.8, experiments/rl). The
ablation switches (--config.rl.loss_norm=token, --config.rl.kl_coef=0.05,
--config.rl.group_size=4, ...) are documented in llm_jax/config.py.
To start from another run instead: --config.train.init_from=<run> --config.rl.sft_steps=0 (its
model and tokenizer; the prompts must encode with it).
"""

from llm_jax.config import default_config


def get_config():
  c = default_config()
  c.model.block_size = 64
  c.model.n_layer = 2
  c.model.n_head = 4
  c.model.n_embd = 64
  c.model.pos = "rope"
  # the sampler's and the trainer's log-probs agree to float32 rounding (rl/rollout.py)
  c.model.dtype = "float32"
  c.parallel = "none"
  # the supervised warm-up's batch (demonstrations per step)
  c.train.batch_size = 32
  c.train.learning_rate = 1e-3
  c.train.schedule = "constant"
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.0
  c.train.max_steps = 60
  c.train.log_interval = 10
  c.train.checkpoint_every = 20
  c.train.rl_epochs = 1
  c.rl.task = "arithmetic:4"
  c.rl.sft_steps = 300
  c.rl.group_size = 8
  c.rl.prompts_per_step = 8
  c.rl.max_new_tokens = 4
  # the RL updates at 3e-4: at 1e-3 the reward fell (experiments/rl/README.md)
  c.rl.lr_scale = 0.3
  return c
