#!/usr/bin/env bash
# The GPU figures of docs/ghostnet.md in one run (at most 8 minutes of step limits on one GPU), with the GPU named:
#   1. GhostNet v1 and GhostNetV3 training images/s at batch 256, AMP and channels_last, on synthetic batches
#      (benchmarks/bench_train_step.py: only the step is timed) ...
#   2. ... and from generated JPEGs through the loader (benchmarks/bench_epoch.py: decoding, augmentation, the
#      step); the ratio of 2 to 1 says whether the input pipeline keeps the GPU fed;
#   3. the comparison on CUDA for the default set (evaluation/compare.py, GhostNetV2/V3 included);
#   4. the sorter's images/s (benchmarks/bench_classify.py);
#   5. the ONNX export run on onnxruntime's CUDA execution provider, if onnxruntime-gpu is installed
#      (benchmarks/bench_export.py).
# Each step has its own time limit, so one that hangs cannot take the others' time. On a machine without CUDA it
# prints one line and exits 0.
#
#     bash benchmarks/gpu_check.sh                      # results under runs/gpu_check
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured."
    exit 0
fi
mkdir -p "$OUT"
GPU=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB')")
echo "gpu_check on $GPU, torch $("$PY" -c 'import torch; print(torch.__version__)'); results in $OUT"
failed=0

step() {  # step SECONDS TITLE COMMAND...: run with a time limit, say how it ended
    local limit=$1 title=$2
    shift 2
    echo
    echo "== $title (limit ${limit} s) on $GPU"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    if [ "$rc" -eq 124 ]; then
        echo "== $title: stopped after ${limit} s"
        failed=1
    elif [ "$rc" -ne 0 ]; then
        echo "== $title: failed (exit status $rc)"
        failed=1
    else
        echo "== $title: done in $((SECONDS - start)) s"
    fi
}

step 75 "1. training step, synthetic batches, batch 256, AMP + channels_last" \
    "$PY" benchmarks/bench_train_step.py --archs ghostnet ghostnetv3 --batch 256 --amp --steps 10 --repeats 2 \
    --out "$OUT/train_step.csv"
for arch in ghostnet ghostnetv3; do
    step 75 "2. training from JPEGs through the loader, $arch, batch 256" \
        "$PY" benchmarks/bench_epoch.py --arch "$arch" --images 3072 -b 256 --out "$OUT/epoch_$arch.csv"
done
step 150 "3. comparison on CUDA, default set" \
    "$PY" evaluation/compare.py --device cuda --repeats 100 --output-dir "$OUT/compare"
step 45 "4. the sorter" "$PY" benchmarks/bench_classify.py --images 2048 --out "$OUT/classify.csv"
if "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
        2>/dev/null; then
    step 60 "5. ONNX export on onnxruntime's CUDA execution provider" \
        "$PY" benchmarks/bench_export.py --archs ghostnet ghostnetv3 --images 512 --out "$OUT/export.csv"
else
    echo
    echo "== 5. ONNX on CUDA: skipped, onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
fi
echo
echo "gpu_check on $GPU: $([ "$failed" -eq 0 ] && echo 'every step done' || echo 'some steps failed, see above')"
exit "$failed"
