#!/bin/bash
# The figures of experiments/rl/README.md: one supervised run teaches the answer format, then GRPO
# from it with 3 seeds at each point of the loss_norm ablation (sequence: GRPO; token: DAPO /
# Dr. GRPO). Usage: bash experiments/rl/run.sh [runs folder, default runs/rl]; then
# python experiments/rl/plot.py <runs folder>
set -e
R=${1:-runs/rl}
C=configs/rl_arithmetic.py
# 300 supervised steps and one RL step (a run must take one): the source of every RL run below
[ -f $R/sft/summary.json ] || llm-jax rl --config=$C --workdir=$R/sft --config.train.max_steps=1
for norm in sequence token; do
  for seed in 0 1 2; do
    llm-jax rl --config=$C --workdir=$R/${norm}_s$seed --config.seed=$seed \
      --config.train.init_from=$R/sft --config.rl.sft_steps=0 --config.rl.loss_norm=$norm \
      --config.train.max_steps=60
  done
done
