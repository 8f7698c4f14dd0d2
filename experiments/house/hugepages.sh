#!/bin/bash
# Is the huge-pages re-execution (llm_jax/hostmem.py, GLIBC_TUNABLES=glibc.malloc.hugetlb=1) still
# worth it? `llm-jax bench` of a model whose step temporaries are far above glibc's 32 MiB mmap
# threshold (6 layers x 384, context 256, batch 16), with it (the default) and without
# (LLM_JAX_HUGEPAGES=off), interleaved. Usage: experiments/house/hugepages.sh OUT [rounds]
set -euo pipefail
out=$1; rounds=${2:-2}; mkdir -p "$out"
args=(--config=configs/gpt_char_baby.py --config.model.n_layer=6 --config.model.n_head=6
      --config.model.n_embd=384 --config.model.block_size=256 --config.model.dtype=float32
      --config.train.batch_size=16 --steps=4 --warmup=1 --decode_tokens=0)
for r in $(seq "$rounds"); do
  for v in on off; do
    if [ $v = on ]; then env=(); else env=(LLM_JAX_HUGEPAGES=off); fi
    # (the process's page faults and kernel time: what the huge pages save, and what the load of
    # a shared machine changes least)
    env "${env[@]}" LLM_JAX_COMPILATION_CACHE=off /usr/bin/time -o "$out/$v.$r.time" \
      -f "%e s wall, %U s user, %S s sys, %R minor faults, %M KB max RSS" \
      .venv/bin/python -m llm_jax bench "${args[@]}" --json_out="$out/$v.$r.json" \
      > /dev/null 2> "$out/$v.$r.log"
    cat "$out/$v.$r.time"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r['train_ms_per_step'], r['cpu_ms_per_step'], r['host_peak_rss_mb'])" "$out/$v.$r.json" $v
  done
done
