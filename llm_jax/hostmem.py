"""Host memory: transparent huge pages for the step's temporaries (Linux with glibc).

XLA on CPU allocates each step's temporary buffers with malloc. glibc serves blocks over 32 MiB
with a fresh mmap and unmaps them when freed, so every step of a large model touches its
gigabytes of temporaries anew, one 4 KiB page fault at a time, and a large share of the step is
spent in the kernel (the profile is in experiments/perf). glibc's tunable `glibc.malloc.hugetlb=1`
makes malloc ask for transparent huge pages (madvise): 2 MiB pages, 512 times fewer faults.
glibc reads it at process start only, so the command line re-executes itself once with it set.
LLM_JAX_HUGEPAGES=off leaves the environment alone.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def wants_hugepages(environ) -> bool:
  """True where the tunable is missing and may help: Linux, not disabled, not already set."""
  return (sys.platform.startswith("linux") and environ.get("LLM_JAX_HUGEPAGES") != "off"
          and "glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", ""))


def with_hugepages(environ) -> dict:
  """A copy of `environ` with the tunable added (other GLIBC_TUNABLES kept)."""
  env = dict(environ)
  if wants_hugepages(env):
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), TUNABLE) if t)
  return env


def reexec_with_hugepages(argv) -> None:
  """Replaces this process by `python -m llm_jax argv[1:]` with the tunable set; returns only
  where nothing needs doing. Call it first thing, before JAX or any thread starts."""
  if wants_hugepages(os.environ):
    os.execve(sys.executable, [sys.executable, "-m", "llm_jax", *argv[1:]],
              with_hugepages(os.environ))
