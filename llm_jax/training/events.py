"""TensorBoard event files beside metrics.jsonl: `tensorboard --logdir=<workdir>` watches a run.

Scalars under the names TensorBoard groups by prefix: train/loss, train/grad_norm,
train/param_norm, train/lr, train/tokens_per_s at log steps; val/loss, eval/train_loss and the
task's further metrics (val/bpb, val/exact_match, ...) at evaluations; and a short sample of text
at evaluations (text/sample). They are written with the `tensorboard` package's own event writer
and protocol buffers (no TensorFlow, no torch). A resumed run starts its file with TensorBoard's
purge marker at its start step (a SessionLog START), so TensorBoard drops the events an
interrupted run logged past its last checkpoint, as metrics.jsonl does.
"""

import time

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_STRING
from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# metrics.jsonl key at a log step -> TensorBoard tag
TRAIN_TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm",
              "param_norm": "train/param_norm", "lr": "train/lr",
              "tokens_per_s": "train/tokens_per_s", "ms_per_step": "train/ms_per_step",
              "skipped_updates": "train/skipped_updates"}
# what marks a summary as the text plugin's (TensorBoard's text dashboard shows it)
TEXT_METADATA = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
    plugin_name="text", content=TextPluginData(version=0).SerializeToString()))


class EventWriter:
  def __init__(self, workdir: str, start_step: int):
    self.writer = EventFileWriter(workdir)
    if start_step:  # TensorBoard forgets what the file's earlier runs logged from here on
      self._add(start_step, session_log=SessionLog(status=SessionLog.START))

  def _add(self, step: int, **fields) -> None:
    self.writer.add_event(Event(wall_time=time.time(), step=step, **fields))

  def _scalar(self, tag: str, value, step: int) -> None:
    self._add(step, summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]))

  def train(self, record: dict) -> None:
    """A log step's record: its known keys under TRAIN_TAGS, any other number (a mixture of
    experts' moe_* statistics, ...) as train/<key>."""
    self.scalars(record, {k: v for k, v in record.items() if k not in TRAIN_TAGS}, "train")
    for key, tag in TRAIN_TAGS.items():
      if key in record:
        self._scalar(tag, record[key], record["step"])

  def scalars(self, record: dict, values: dict, prefix: str) -> None:
    """values' numbers at record['step'], each as <prefix>/<key> (a key with a '/' as it is)."""
    for key, value in values.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._scalar(key if "/" in key else f"{prefix}/{key}", value, record["step"])

  def evaluation(self, step: int, losses: dict, extra: dict, sample: str | None) -> None:
    self._scalar("val/loss", losses["val"], step)
    self._scalar("eval/train_loss", losses["train"], step)
    for key, value in extra.items():  # 'val_bpb' -> 'val/bpb'; 'harness/<task>/acc' as it is
      self._scalar(key if "/" in key else key.replace("_", "/", 1), value, step)
    if sample is not None:
      # TensorBoard renders text as Markdown: a code block keeps the sample's lines and spaces
      text = TensorProto(dtype=DT_STRING, tensor_shape=TensorShapeProto(),
                         string_val=[("```\n" + sample + "\n```").encode("utf-8")])
      self._add(step, summary=Summary(value=[Summary.Value(tag="text/sample",
                                                           metadata=TEXT_METADATA, tensor=text)]))
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()
