"""Loss curves of one or several runs, from their metrics.jsonl, into one PNG.

    llm-jax plot runs/gpt_char runs/gpt_post --out=curves.png

One colour per run, labelled by its workdir's name: the training loss at log steps as a thin line,
the val loss at evaluations as a thicker line with markers. matplotlib draws off-screen (Agg).
"""

import os

from llm_jax.errors import UserError
from llm_jax.fileio import METRICS_FILE, read_metrics


def read_curves(workdir: str) -> dict:
  """{'train': ([step], [loss]), 'val': ([step], [loss])} from <workdir>/metrics.jsonl."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{workdir} has no {METRICS_FILE}: pass the --workdir of a training run")
  curves = {"train": ([], []), "val": ([], [])}
  for r in read_metrics(path):
    for name, key in (("train", "loss"), ("val", "val_loss")):
      if key in r:
        curves[name][0].append(r["step"])
        curves[name][1].append(float(r[key]))
  if not curves["train"][0] and not curves["val"][0]:
    raise UserError(f"{path} holds no loss yet: train the run for a few steps first")
  return curves


def plot_runs(workdirs: list[str], out: str) -> str:
  """Draws the curves of `workdirs` into the PNG `out`; returns its path."""
  if not workdirs:
    raise UserError("no run to plot: pass one or more workdirs, as `llm-jax plot runs/a runs/b`")
  curves = {w: read_curves(w) for w in workdirs}  # every run is checked before anything is drawn
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  kind = os.path.splitext(out)[1].lstrip(".").lower() or "png"  # no suffix: matplotlib's PNG
  formats = plt.figure().canvas.get_supported_filetypes()
  plt.close("all")
  if kind not in formats:
    raise UserError(f"--out={out}: matplotlib cannot write a .{kind} file: name a .png (or "
                    f"{', '.join('.' + f for f in sorted(formats) if f != 'png')})")

  fig, ax = plt.subplots(figsize=(8, 5))
  for i, (workdir, c) in enumerate(curves.items()):
    colour, label = f"C{i % 10}", os.path.basename(os.path.normpath(workdir))
    if c["train"][0]:
      ax.plot(*c["train"], color=colour, linewidth=0.8, alpha=0.6, label=f"{label} train")
    if c["val"][0]:
      ax.plot(*c["val"], color=colour, linewidth=2, marker="o", markersize=3, label=f"{label} val")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  try:
    fig.savefig(out, dpi=120)
  except OSError as e:
    raise UserError(f"--out={out} cannot be written ({e.strerror or e}): pick another path") \
        from None
  finally:
    plt.close(fig)
  return out
