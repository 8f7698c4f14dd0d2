"""nanoGPT's `generate` at batch 1 from a 1-token prompt, on fresh weights (speed does not depend
on them): the baby model past its 64-token window (500 tokens) and the 10.7M one within its
256-token window (250 tokens); best of 3. Prints one JSON object.
  /path/to/torch/python experiments/perf/nanogpt_generate.py /path/to/nanogpt
"""
import json
import sys
import time

import torch

sys.path.insert(0, sys.argv[1])
from model import GPT, GPTConfig  # noqa: E402  (nanoGPT's model.py)

torch.manual_seed(0)
out = {}
for name, shape, n in (("baby_500", dict(n_layer=4, n_head=4, n_embd=128, block_size=64), 500),
                       ("m10_250", dict(n_layer=6, n_head=6, n_embd=384, block_size=256), 250)):
  model = GPT(GPTConfig(vocab_size=65, dropout=0.0, bias=False, **shape)).eval()
  seconds = []
  with torch.no_grad():
    for _ in range(3):
      t = time.perf_counter()
      model.generate(torch.zeros((1, 1), dtype=torch.long), n)
      seconds.append(round(time.perf_counter() - t, 3))
  out[name] = {"tokens_per_s": round(n / min(seconds), 1), "seconds": seconds}
print(json.dumps(out))
