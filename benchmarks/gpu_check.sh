#!/usr/bin/env bash
# The benchmarks on a lent GPU, in at most ~8 minutes wall time (GPU_CHECK_BUDGET_S, default 470 s).
#
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Assumes a python ($PYTHON, else `python`) whose jax has CUDA, plus optax/chex/orbax/tqdm/matplotlib;
# pfedhn_jax is imported from this checkout (no install needed). torch is optional: without a
# CUDA-capable torch the torch comparison is skipped.
# Output: tables on stdout; JSON, PNG and logs in $OUT_DIR (default benchmarks/out/gpu), and when $OUT
# is set (as on the device machine, which returns at most 8 files) all of them in $OUT/gpu_check.tar.gz.
# Knobs: E2E_FRACTION (default 0.2 = 1000 of 5000 steps; 1 = the whole schedule, if it fits),
#        CPS (default 1,8,64,256), PFEDHN_DATA_DIR (default: the first of ../shared/data, shared/data).
# Each part runs under `timeout` with what is left of the budget, so a slow part cannot eat the rest;
# client_throughput writes its JSON after every row, so a part cut short still leaves its rows.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)
OUT_DIR=${OUT_DIR:-benchmarks/out/gpu}
mkdir -p "$OUT_DIR"
DATA=${PFEDHN_DATA_DIR:-}
if [ -z "$DATA" ]; then
  for d in ../shared/data shared/data /work/shared/data; do
    if [ -f "$d/cifar10.npz" ]; then DATA=$d; break; fi
  done
fi
CPS=${CPS:-1,8,64,256}
E2E_FRACTION=${E2E_FRACTION:-0.2}
export BENCH_NOTE=${BENCH_NOTE:-"gpu_check.sh on a lent GPU"}
export PYTHONUNBUFFERED=1

# run_part NAME MAX_SECONDS cmd...: run with min(MAX, budget left - 5 s), log to $OUT_DIR/NAME.log
run_part() {
  local name=$1 max=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  local lim=$(( max < left ? max : left ))
  if [ "$lim" -lt 20 ]; then echo "== $name: skipped (budget spent)"; return; fi
  echo "== $name (limit ${lim}s): $*"
  timeout -k 5 "$lim" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "== $name: exit code $rc$([ "$rc" -eq 124 ] && echo ' (timed out: partial results)')"
}

echo "== gpu_check $(date -Is); python: $PY; data: ${DATA:-NOT FOUND}; out: $OUT_DIR"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 120 "$PY" -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())" || true
[ -n "$DATA" ] || { echo "cifar10.npz not found: set PFEDHN_DATA_DIR"; exit 2; }

# 1. client-parallel scaling: vmap over clients, C = 1 .. 256 (the GPU case the issue asks about), with
#    lax.conv (auto off CPU: a grouped convolution under vmap) and im2col (batched matmuls), which the
#    issue's earlier H200 run found faster at C = 256; these rows decide builders.resolve_conv_impl off CPU
run_part client_throughput_vmap 150 "$PY" benchmarks/client_throughput.py --strategies vmap --cps "$CPS" \
  --conv-impl xla,im2col --data-dir "$DATA" --out "$OUT_DIR/client_throughput_vmap.json"
# 1b. C = 256 at JAX's default precision (TF32 on NVIDIA GPUs) instead of float32: what float32 costs,
#     and whether the issue's 1,000 client updates/s needs the tensor cores (benchmarks/RESULTS.md, "What
#     the GPU targets ask of the chip")
run_part client_throughput_tf32 60 "$PY" benchmarks/client_throughput.py --strategies vmap --cps 256 \
  --conv-impl xla,im2col --matmul-precision default --data-dir "$DATA" --out "$OUT_DIR/client_throughput_tf32.json"
# 2. runs (seeds) per program: S = 1, 3, 8, 24 in one program, vmapped (the default off CPU) and run by run
run_part runs_per_program 90 "$PY" benchmarks/runs_per_program.py --runs 1,3,8,24 --repeats 5 --both \
  --data-dir "$DATA" --out "$OUT_DIR/runs_per_program.json"
# 3. the paper's schedule (fraction, extrapolated to 5000 steps), evaluation included
run_part end_to_end 110 "$PY" benchmarks/end_to_end.py --fraction "$E2E_FRACTION" --data-dir "$DATA" \
  --out "$OUT_DIR/end_to_end.json"
# 4. torch reference step vs the JAX step, back to back (only if torch with CUDA is importable)
if timeout 60 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  run_part torch_reference 80 "$PY" benchmarks/torch_reference.py --device cuda --threads "$(nproc)" \
    --jax-python "$PY" --data-dir "$DATA" --out "$OUT_DIR/torch_reference.json"
else
  echo "== torch_reference: skipped (no torch with CUDA in $PY)"
fi
# 5. the other strategies at a few C (loop unrolls C client loops: compile time grows with C)
run_part client_throughput_map_loop 70 "$PY" benchmarks/client_throughput.py --strategies map,loop --cps 1,4,16 \
  --data-dir "$DATA" --out "$OUT_DIR/client_throughput_map_loop.json"
# 6. the convolution implementations in the local loop (auto = xla off CPU; is nhwc_vjp or im2col faster here?)
run_part conv_impls 40 "$PY" benchmarks/conv_impls.py --clients 1,8 --repeats 5 --out "$OUT_DIR/conv_impls.json"
echo "== gpu_check done in $(( $(date +%s) - START )) s; results in $OUT_DIR"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_check.tar.gz" -C "$OUT_DIR" . && echo "== bundled: \$OUT/gpu_check.tar.gz"; fi
