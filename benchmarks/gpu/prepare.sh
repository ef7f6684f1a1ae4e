#!/usr/bin/env bash
# Run HERE (a machine that reaches the package index), before asking for a GPU machine:
# downloads the wheels that a lent GPU machine lacks (it has torch, torchvision, numba, ... but
# no Detectron2, fvcore, iopath, pycocotools; and no network) into ./.whl, and copies real COCO
# images into ./.gpu_data/images. Both paths are git-ignored: pass them as `carry`.
#   bash benchmarks/gpu/prepare.sh [IMAGE_FOLDER] [PYTHON_VERSION]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGES="${1:-$ROOT/../shared/data/coco128_train2017/images}"
PYVER="${2:-3.12}"  # the GPU image's Python (KINDS.md: 3.12.3)
PY="${PYTHON:-python3}"
WHL="$ROOT/.whl"
mkdir -p "$WHL" "$ROOT/.gpu_data"
dl() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$WHL" "$@"
}
dl "sal-detectron2==0.7.2" --python-version 3.10  # pure Python, published as a cp310 wheel
for f in "$WHL"/sal_detectron2-*cp310-none-any.whl; do
  [[ -e "$f" ]] && mv "$f" "${f/cp310-none-any/py3-none-any}"
done
# Binary packages as wheels for that Python; pure-Python ones published only as source are
# built into py3-none-any wheels here (the GPU machine cannot fetch build dependencies).
dl pycocotools==2.0.11
for spec in fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.1 \
            hydra-core==1.3.8 antlr4-python3-runtime==4.9.3; do
  dl "$spec" 2>/dev/null || "$PY" -m pip wheel -q --no-deps -w "$WHL" "$spec"
done
if [[ -d "$IMAGES" ]]; then
  rm -rf "$ROOT/.gpu_data/images"
  cp -r "$IMAGES" "$ROOT/.gpu_data/images"
else
  echo "[prepare] no image folder at $IMAGES: the checks will use the generated demo images" >&2
fi
du -sh "$WHL" "$ROOT/.gpu_data"
ls "$WHL"
echo "[prepare] now run on the GPU machine, carrying .whl and .gpu_data:"
echo "    bash benchmarks/gpu/run_checks.sh"
