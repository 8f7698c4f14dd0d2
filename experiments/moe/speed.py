"""The step time of a mixture of experts against the dense model of equal active parameters, at
the 10.7M shape of experiments/optimizers_large (6 layers x 384 wide, context 128, batch 8,
float32): 8 experts top-2, each expert half the dense FFN's width (moe_expert_hidden 0), so a
token meets the dense model's parameters; dispatched by ragged_dot, by padded blocks (dropless)
and by blocks with capacity factor 1.25. All four in one process, one after the other, so that
their ratios share the machine's load.

    python experiments/moe/speed.py [--steps=10]  # writes experiments/moe/speed.json
"""

import json
import os
import sys

from absl import app, flags

from llm_jax.bench import train as bench_train
from llm_jax.fileio import load_python_file

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "optimizers_large",
                     "base.py")
flags.DEFINE_integer("steps", 10, "timed steps of each variant")
flags.DEFINE_string("out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "speed.json"),
                    "the figures")
FLAGS = flags.FLAGS

VARIANTS = {
    "dense": {},
    "moe8_top2_ragged": dict(moe_experts=8, moe_top_k=2, moe_dispatch="ragged"),
    "moe8_top2_blocks": dict(moe_experts=8, moe_top_k=2, moe_dispatch="blocks"),
    "moe8_top2_capacity1.25": dict(moe_experts=8, moe_top_k=2, moe_dispatch="blocks",
                                   moe_capacity_factor=1.25),
}


def main(_):
  rows = {}
  for name, model in VARIANTS.items():
    c = load_python_file(_BASE, _BASE, "experiments/optimizers_large/base.py is missing"
                         ).get_config()
    c.parallel = "none"
    c.model.update(model)
    r = bench_train.run(c, steps=FLAGS.steps, warmup=2, decode_tokens=20, eval_repeats=2)
    rows[name] = {"ms_per_step": r["train_ms_per_step"]["median"], "params": r["params"],
                  "active_params": r["active_params"], "mfu": r["mfu"],
                  "achieved_gflops": r["achieved_gflops"], "compile_s": r["compile_s"],
                  "loadavg": r["loadavg"], "device": r["device"]}
    rows[name]["over_dense"] = round(rows[name]["ms_per_step"] / rows["dense"]["ms_per_step"], 3)
    print(name, json.dumps(rows[name]), flush=True)
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    json.dump({"command": " ".join(["python"] + sys.argv), "steps": FLAGS.steps, "rows": rows},
              f, indent=1)


if __name__ == "__main__":
  app.run(main)
