#!/bin/bash
# kill -9 in the middle of an RL run, resume, and compare with the uninterrupted run: the final
# parameters must be equal bitwise (experiments/rl/README.md). Usage:
#   bash experiments/rl/kill_resume.sh [scratch folder, default runs/rl_kill]
set -e
R=${1:-runs/rl_kill}
rm -rf $R; mkdir -p $R
FLAGS="--config=configs/rl_arithmetic.py --config.rl.sft_steps=20 --config.train.max_steps=16 \
  --config.train.checkpoint_every=4 --config.rl.kl_coef=0.05 --config.train.log_interval=1"
llm-jax rl $FLAGS --workdir=$R/straight > $R/straight.log 2>&1
llm-jax rl $FLAGS --workdir=$R/killed > $R/killed.log 2>&1 &
pid=$!
# kill -9 once the RL steps have started and a checkpoint past the SFT exists
until grep -q "^step 3[0-9]/36:" $R/killed.log 2>/dev/null; do sleep 0.2; done
kill -9 $pid; wait $pid || true
echo "killed after: $(tail -1 $R/killed.log)"
ls $R/killed/checkpoints
llm-jax rl $FLAGS --workdir=$R/killed > $R/resumed.log 2>&1
head -1 $R/resumed.log
python - "$R" <<'PY'
import sys, jax, numpy as np
from llm_jax.training.workdir import load_run
a, b = (load_run(f"{sys.argv[1]}/{w}")[3] for w in ("straight", "killed"))
same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
print("final parameters bitwise equal:", same)
PY
