"""A graceful stop: SIGINT, SIGTERM or SIGUSR2 during training ends the run at a step boundary.

    with StopRequest() as stop:
      for step in ...:
        ...one step...
        if stop.signum: save a checkpoint, wait for it, raise Interrupted(stop.signum, step, workdir)

The first signal only sets a flag, so the step in flight finishes and a complete checkpoint is
written. SIGUSR2 is a scheduler's warning (SLURM sends it before a job's time limit; submitit's
preemption signal), SIGTERM a scheduler's or a person's stop. A person's second SIGINT or SIGTERM
raises KeyboardInterrupt at once (the last complete checkpoint stays good: Orbax commits a step by
renaming it); a signal after SIGUSR2, or a SIGUSR2 after another, does not: the save goes on.
Handlers exist only inside the `with` block and only in the main thread (Python delivers signals
there); the previous ones are restored on exit.
"""

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
QUIT_ON_SECOND = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run stopped on a signal after saving a checkpoint; exit with 128 + the signal's number."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step, self.workdir = signum, step, workdir
    self.exit_code = 128 + signum
    super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint "
                     f"saved; resume with the same command (--workdir={workdir})")


class StopRequest:
  """Context manager: `signum` is None until the first SIGINT/SIGTERM/SIGUSR2, then that signal."""

  def __init__(self, prog: str = "llm-jax train"):
    self.prog, self.signum, self._previous = prog, None, {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      if signum in QUIT_ON_SECOND and self.signum in QUIT_ON_SECOND:
        raise KeyboardInterrupt
      return
    self.signum = signum
    again = " (send it again to quit at once)" if signum in QUIT_ON_SECOND else ""
    print(f"{self.prog}: {signal.Signals(signum).name}: saving a checkpoint after this step{again}",
          file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False
