#!/bin/bash
# The runs of run.sh continued to 200 RL steps (a raised train.max_steps resumes a finished run;
# the schedule is constant, so the first 60 steps are those of run.sh)
set -e
R=${1:-runs/rl}
C=configs/rl_arithmetic.py
for norm in sequence token; do
  for seed in 0 1 2; do
    llm-jax rl --config=$C --workdir=$R/${norm}_s$seed --config.seed=$seed \
      --config.train.init_from=$R/sft --config.rl.sft_steps=0 --config.rl.loss_norm=$norm \
      --config.train.max_steps=200
  done
done
