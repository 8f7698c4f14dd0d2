"""The training step's memory (XLA's memory_analysis of the compiled step: temporaries, arguments)
for each model.remat, with the layers scanned and not, for a config file's model. Compiles only,
runs nothing: its figures do not depend on the machine's load. One JSON line per variant:

  python experiments/perf/remat_memory.py configs/gpt_char_baby.py [batch_size]
"""

import json
import sys

import jax

from llm_jax.fileio import load_python_file
from llm_jax.models import build_model
from llm_jax.training import parallel
from llm_jax.training.losses import make_loss_fn
from llm_jax.training.optimizer import make_optimizer
from llm_jax.training.steps import init_state, make_train_step

REMATS = ("none", "full", "dots_with_no_batch_dims_saveable", "dots_saveable")


def measure(path, batch_size=None, vocab_size=65):
  for scan in (False, True):
    for remat in REMATS:
      c = load_python_file(path, path, "pass a config file").get_config()
      c.model.update(remat=remat, scan_layers=scan, dtype="float32")
      if batch_size:
        c.train.batch_size = batch_size
      model = build_model(c.model, vocab_size)
      tx = make_optimizer(c.train)
      state = jax.eval_shape(lambda: init_state(model, c.model, tx, jax.random.key(0)))
      B, T = c.train.batch_size, c.model.block_size
      tokens = jax.ShapeDtypeStruct((1, B, T), jax.numpy.int32)
      step = jax.jit(make_train_step(make_loss_fn(model), tx))
      m = parallel._compiled_memory(step.lower(state, {"inputs": tokens, "targets": tokens},
                                               jax.random.key(1)))
      print(json.dumps({"config": path, "batch_size": B, "block_size": T,
                        "n_layer": c.model.n_layer, "n_embd": c.model.n_embd,
                        "scan_layers": scan, "remat": remat, **m,
                        "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
  measure(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
