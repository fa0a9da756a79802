#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one unattended run (about 5 minutes on one H200):
#   the DropFormer head at both sizes, and WavLM-Large at layer 12 live (naive Hugging Face
#   baseline vs the monitor: fp32/fp16/bf16 agreement with exact fp32, the batching curve and
#   where batching stops paying, the daemon's capacity in streams per GPU).
# Run from the repository root on the GPU machine (PyTorch + transformers installed; the other
# packages as wheels in .whl/, made here by tools/gpu_wheels.sh):
#   OUT=/path/for/results AUDIO_DIR=/path/to/emodb/wav bash tools/gpu_bench.sh
# (AUDIO_DIR: EmoDB's wav folder; without it the 12 files of tests/data/emodb. BENCH_ARGS: more --set
# options, applied last; e.g. a quick check on a CPU: DEVICE=cpu BENCH_ARGS="--set repeats=2 ...".)
# Writes $OUT/gpu_bench.json, $OUT/gpu_bench.md, $OUT/gpu_bench.log, $OUT/environment.txt
# (and *.partial.* files as phases finish, should the run be cut short).
set -uo pipefail
OUT=${OUT:-gpu-bench-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc; lscpu | grep 'Model name';
  $PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'; } \
    > "$OUT/environment.txt" 2>&1
timeout ${BENCH_TIMEOUT_S:-345} $PY -m streamer.cli bench --parts head,wavlm \
    --set device=${DEVICE:-cuda} ${AUDIO_DIR:+--set audio_dir=$AUDIO_DIR} --set repeats=30 --set "head_batches=[1,8]" \
    --set agreement_windows=100 --set "naive_streams=[32]" --set "live_streams=[16,64,160]" \
    --set live_step_s=20 --set live_settle_s=6 --set max_batch=64 \
    --set out="$OUT/gpu_bench.json" --set md="$OUT/gpu_bench.md" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.log"
exit "${PIPESTATUS[0]}"
