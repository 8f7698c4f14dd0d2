#!/bin/bash
# The losses of three small runs, to compare bitwise before and after a refactoring (issue 38):
# a 2-run vectorized sweep, a mesh run (4 simulated devices: data=2 x fsdp=2) and a run on a
# prepared corpus. Usage, from the repository whose code is to be measured:
#   experiments/house/bitwise.sh OUT [PYTHON] [CORPUS]
# writes OUT/losses.txt (each run's metrics.jsonl losses, one line a record). Compare two such
# files with diff. PYTHON: the interpreter (default .venv/bin/python); PYTHONPATH picks the code.
# CORPUS: 'text' (default: the sweep and the mesh run read the toy text as a text_file corpus) or
# 'prepared' (they read the toy text prepared by `llm-jax prepare`, as run 3 does: the data path
# a change to how text corpora are read leaves alone).
set -euo pipefail
out=$(realpath -m "$1"); py=${2:-.venv/bin/python}; corpus=${3:-text}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out" && mkdir -p "$out"
export JAX_PLATFORMS=cpu LLM_JAX_DATA_DIR="$out/data" LLM_JAX_COMPILATION_CACHE=off
python3 - "$out/toy.txt" <<'PY'
import sys
open(sys.argv[1], "w").write("the cat sat on the mat. the dog sat on the log. " * 40 +
                             "a bird sang in the tree. a fish swam in the sea. " * 40)
PY
export HOUSE_CORPUS="$out/toy.txt"
# the prepared corpus (run 3's; with CORPUS 'prepared', the other runs' too)
"$py" -m llm_jax prepare --source="$out/toy.txt" --tokenizer=char --out="$out/prepared_data" \
  --separator=". " --val=0.1 --shard_tokens=1000 --workers=0 > "$out/prepare.log" 2>&1
if [ "$corpus" = prepared ]; then export HOUSE_PREPARED="$out/prepared_data"; fi
# 1. the sweep: its experiment folder copied, so that its runs land in OUT
mkdir -p "$out/sweep" && cp "$here/sweep/experiment.py" "$out/sweep/"
sed -i "s|\.\./tiny.py|$here/tiny.py|" "$out/sweep/experiment.py"
"$py" -m llm_jax sweep "$out/sweep" --vectorize > "$out/sweep.log" 2>&1
# 2. the mesh run
XLA_FLAGS=--xla_force_host_platform_device_count=4 "$py" -m llm_jax train \
  --config="$here/tiny.py" --workdir="$out/mesh" --config.parallel=auto \
  --config.mesh.data=2 --config.mesh.fsdp=2 > "$out/mesh.log" 2>&1
# 3. a prepared corpus
HOUSE_PREPARED="$out/prepared_data" "$py" -m llm_jax train --config="$here/tiny.py" \
  --workdir="$out/prepared" --config.parallel=none > "$out/prepared.log" 2>&1
# every metrics.jsonl's losses, in a fixed order
(cd "$out" && for f in $(find . -name metrics.jsonl | sort); do
  python3 -c "
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  print(sys.argv[1], r['step'], {k: v for k, v in sorted(r.items()) if 'loss' in k or k in ('grad_norm', 'param_norm', 'lr')})
" "$f"; done) > "$out/losses.txt"
wc -l "$out/losses.txt"
