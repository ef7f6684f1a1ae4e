#!/usr/bin/env bash
# Run ON a lent GPU machine (no network), after benchmarks/gpu/prepare.sh here, with `.whl` and
# `.gpu_data` carried. Installs the carried wheels next to the machine's own torch, then runs,
# each under its own time limit, writing logs and JSON into $OUT (default ./gpu_out):
#   1. bench_step: the paper-setting step, ResNet-50, batch 64, bf16, channels-last, crops
#      grouped by resolution, also fed by the real loader with 16 workers (the H100 target:
#      >= 400 images/s end to end), peak memory; the fp32 ungrouped reference next to it;
#      then the same with the backbone compiled (MODEL.SSPRL.COMPILE, inductor);
#   2. bench_data: the device part of PHOTOMETRIC_ON model on CUDA;
#   3. tools/train_net.py: a short real pre-training run on CUDA with AMP (bf16) and SyncBN
#      (one process), then --resume from its checkpoint.
# About 8-11 minutes on an H100 after the machine is up (the parts have their own time limits).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
IMAGES="${1:-.gpu_data/images}"
log() { echo "[gpu] $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -3
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[[ -d "$SITE/tools" && -f "$SITE/tools/train_net.py" ]] && rm -rf "$SITE/tools"  # Detectron2 wheel's stray package
"$PY" -c "import torch, detectron2, ssprl_d2, numba; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$OUT/summary.txt" || { log "the environment does not import"; exit 1; }
[[ -d "$IMAGES" ]] || IMAGES=""  # bench scripts fall back to the generated demo images

log "1. bench_step (paper setting, R50, batch 64, bf16, channels-last, 16 loader workers)"
timeout 330 "$PY" benchmarks/bench_step.py --device cuda --depth 50 --batch-size 64 --amp bf16 \
  --channels-last --group-crops resolution --num-workers 16 --iters 8 --warmup 2 \
  ${IMAGES:+--images "$IMAGES"} --json "$OUT/bench_step.json" 2>&1 | tee "$OUT/bench_step.log" | tail -6
log "bench_step exit ${PIPESTATUS[0]}"

log "1b. bench_step, the same with the backbone compiled (torch.compile, inductor)"
timeout 300 "$PY" benchmarks/bench_step.py --device cuda --depth 50 --batch-size 64 --amp bf16 \
  --channels-last --group-crops resolution --compile inductor --num-workers 16 --iters 8 \
  --warmup 3 --no-baseline ${IMAGES:+--images "$IMAGES"} --json "$OUT/bench_step_compile.json" \
  2>&1 | tee "$OUT/bench_step_compile.log" | tail -3
log "bench_step compile exit ${PIPESTATUS[0]}"

log "2. bench_data (device part on CUDA)"
timeout 120 "$PY" benchmarks/bench_data.py --num-images 32 --rounds 2 --device-part cuda \
  --modes model/interpolate loader/interpolate ${IMAGES:+--images "$IMAGES"} \
  --json "$OUT/bench_data.json" 2>&1 | tee "$OUT/bench_data.log" | tail -6
log "bench_data exit ${PIPESTATUS[0]}"

log "3. train_net on CUDA: AMP bf16, SyncBN, 20 iterations, then --resume to 30"
TRAIN=(tools/train_net.py --config-file configs/ssprl_demo.yaml --num-gpus 1)
OPTS=(MODEL.DEVICE cuda SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION bfloat16
      MODEL.RESNETS.NORM SyncBN DATALOADER.NUM_WORKERS 4 SOLVER.CHECKPOINT_PERIOD 10
      OUTPUT_DIR "$OUT/train")
timeout 150 "$PY" "${TRAIN[@]}" "${OPTS[@]}" SOLVER.MAX_ITER 20 > "$OUT/train.log" 2>&1
log "train exit $? ($(grep -c 'iter:' "$OUT/train.log") progress lines)"
timeout 120 "$PY" "${TRAIN[@]}" --resume "${OPTS[@]}" SOLVER.MAX_ITER 30 > "$OUT/resume.log" 2>&1
log "resume exit $? ($(grep -m1 -o 'Starting training from iteration [0-9]*' "$OUT/resume.log"))"
rm -f "$OUT"/train/*.pth  # too large to bring back
