"""The progress of a training loop: its step timing and progress bar."""

import sys
import time

from tqdm import tqdm


def duration(seconds: float) -> str:
  """'4m05s', '2h07m'."""
  m, s = divmod(int(seconds), 60)
  return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Progress:
  """The step timing (ms per step of each logged interval, the time of evaluations and saves left
  out), the progress bar, and the plain progress line every train.log_seconds where the bar draws
  nothing (a SLURM log, CI, a sweep's train.log)."""

  def __init__(self, tc, start: int, is_main_process: bool):
    self.tc, self.start = tc, start
    self.bar = tqdm(total=tc.max_steps, initial=start,
                    disable=None if is_main_process else True, dynamic_ncols=True, unit="step")
    self.plain = is_main_process and (self.bar.disable or not sys.stdout.isatty())
    self.t_start = self.t_last = self.t_line = time.perf_counter()
    self.n_since, self.ms_per_step = 0, []

  def step_done(self) -> None:
    self.n_since += 1

  def interval(self) -> float:
    """Seconds per step since the last logged interval."""
    dt = (time.perf_counter() - self.t_last) / self.n_since
    self.ms_per_step.append(dt * 1e3)
    return dt

  def show(self, steps_done: int, loss: float, val_loss: float, tok_s: float,
           **more: str) -> None:
    """One run's figures (or, for several, as `more` says: which run, or their mean)."""
    self.bar.update(self.n_since)
    self.bar.set_postfix(loss=f"{loss:.4f}", val=f"{val_loss:.4f}", tok_s=f"{tok_s:.0f}", **more)
    now = time.perf_counter()
    if self.plain and now - self.t_line >= self.tc.log_seconds:
      # our own ETA: where this line is printed the bar is disabled, and a disabled tqdm counts
      # nothing (no n, no rate); its '00:05<00:10' format is not this line's either
      eta = (now - self.t_start) / (steps_done - self.start) * (self.tc.max_steps - steps_done)
      print(f"step {steps_done}/{self.tc.max_steps}: loss {loss:.4f}, {tok_s:,.0f} "
            f"tokens/s, {duration(now - self.t_start)} elapsed, ETA {duration(eta)}", flush=True)
      self.t_line = now
    self.n_since, self.t_last = 0, time.perf_counter()

  def resume_clock(self) -> None:
    """After an evaluation or a save: the next interval's clock starts now."""
    if self.n_since == 0:
      self.t_last = time.perf_counter()

  def steady_ms(self) -> list:
    """The first logged interval holds the compilation: left out of the speed figures."""
    return self.ms_per_step[1:] or self.ms_per_step

  def close(self) -> None:
    self.bar.close()
