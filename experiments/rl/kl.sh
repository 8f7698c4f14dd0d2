#!/bin/bash
# The KL ablation: the runs of run.sh's loss_norm=sequence point with rl.kl_coef=0.05 (the k3
# estimator against the SFT source), 60 RL steps, seeds 0-2
set -e
R=${1:-runs/rl}
for seed in 0 1 2; do
  llm-jax rl --config=configs/rl_arithmetic.py --workdir=$R/kl_s$seed --config.seed=$seed \
    --config.train.init_from=$R/sft --config.rl.sft_steps=0 --config.rl.kl_coef=0.05 \
    --config.train.max_steps=60
done
