"""TensorBoard event files beside metrics.jsonl: `tensorboard --logdir=<workdir>` watches a run.

Scalars under the names TensorBoard groups by prefix: train/loss, train/grad_norm,
train/param_norm, train/lr, train/tokens_per_s at log steps; val/loss, eval/train_loss and the
task's further metrics (val/bpb, val/exact_match, ...) at evaluations; and a short sample of text
at evaluations (text/sample). tensorboardX writes them without TensorFlow. A resumed run passes
its start step as `purge_step`, so TensorBoard drops the events an interrupted run logged past
its last checkpoint, as metrics.jsonl does.
"""

import logging
import sys


def _import_summary_writer():
  """tensorboardX's SummaryWriter, imported with torch hidden unless torch is loaded already:
  where torch is installed, tensorboardX imports it at once only to accept torch tensors (this
  module passes numbers and strings), about a second of every run's start (experiments/perf).
  Its functions that need torch import it themselves when called."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


SummaryWriter = _import_summary_writer()

# a NaN loss is reported by the run itself (guards.py): no warning per scalar
logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)

# metrics.jsonl key at a log step -> TensorBoard tag
TRAIN_TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm",
              "param_norm": "train/param_norm", "lr": "train/lr",
              "tokens_per_s": "train/tokens_per_s", "ms_per_step": "train/ms_per_step",
              "skipped_updates": "train/skipped_updates"}


class EventWriter:
  def __init__(self, workdir: str, start_step: int):
    self.writer = SummaryWriter(workdir, purge_step=start_step or None)

  def train(self, record: dict) -> None:
    for key, tag in TRAIN_TAGS.items():
      if key in record:
        self.writer.add_scalar(tag, record[key], record["step"])

  def evaluation(self, step: int, losses: dict, extra: dict, sample: str | None) -> None:
    self.writer.add_scalar("val/loss", losses["val"], step)
    self.writer.add_scalar("eval/train_loss", losses["train"], step)
    for key, value in extra.items():  # 'val_bpb' -> 'val/bpb'; 'harness/<task>/acc' as it is
      self.writer.add_scalar(key if "/" in key else key.replace("_", "/", 1), value, step)
    if sample is not None:
      # TensorBoard renders text as Markdown: a code block keeps the sample's lines and spaces
      self.writer.add_text("text/sample", "```\n" + sample + "\n```", step)
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()
