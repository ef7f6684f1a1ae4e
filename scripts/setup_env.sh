#!/usr/bin/env bash
# One-command, idempotent set-up of the ssprl_d2 environment.
#   bash scripts/setup_env.sh            # creates ./.venv (or $SSPRL_VENV)
# Installs torch, torchvision, Detectron2 (from the `sal-detectron2` re-upload, see README),
# the runtime dependencies and ssprl_d2 itself in editable mode. A second run is fast and
# changes nothing; an already-working Detectron2 is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSPRL_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
STAMP="$VENV/.ssprl_setup_done"
TORCH_SPEC="${SSPRL_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
D2_SPEC="sal-detectron2==0.7.2"

die() { echo "[setup] ERROR: $*" >&2; exit 1; }
log() { echo "[setup] $*"; }

# Fast path: everything was installed and the setup inputs did not change since.
if [[ -f "$STAMP" && "$STAMP" -nt "$ROOT/setup.cfg" && "$STAMP" -nt "$ROOT/scripts/setup_env.sh" ]] \
   && "$VENV/bin/python" -c "import torch, torchvision, detectron2, ssprl_d2" 2>/dev/null; then
  log "environment at $VENV is up to date"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  VENV_FLAGS=()
  # Reuse a preinstalled torch (GPU machines): SSPRL_SYSTEM_SITE_PACKAGES=1.
  [[ "${SSPRL_SYSTEM_SITE_PACKAGES:-0}" == "1" ]] && VENV_FLAGS+=(--system-site-packages)
  "$PYTHON_BIN" -m venv "${VENV_FLAGS[@]}" "$VENV" || die "could not create a venv with $PYTHON_BIN (install python3-venv)"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# Free space (GiB, rounded down) on the file system holding $1.
free_gib() { df -Pk "$1" 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}'; }

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  # The x86_64 wheels of torch 2.14 are CUDA builds: about 6 GiB once installed.
  NEED_GIB="${SSPRL_MIN_FREE_GIB:-7}"
  HAVE_GIB="$(free_gib "$VENV")"
  if [[ -n "$HAVE_GIB" && "$HAVE_GIB" -lt "$NEED_GIB" ]]; then
    die "torch + torchvision need about $NEED_GIB GiB of free disk, but only $HAVE_GIB GiB is free at $VENV.
        Free some space (old clones, output/ folders, ~/.cache/pip), or point SSPRL_VENV at a bigger disk,
        or reuse a Python that already has torch and torchvision: SSPRL_SYSTEM_SITE_PACKAGES=1."
  fi
  log "installing $TORCH_SPEC (a large download the first time; $HAVE_GIB GiB free)"
  # No pip cache: a cached copy of the wheels would double the disk it takes.
  # shellcheck disable=SC2086
  "${PIP[@]}" install -q --no-cache-dir $TORCH_SPEC \
    || die "installing torch/torchvision failed (is the disk full? 'df -h $VENV'; or set SSPRL_TORCH_SPEC to another pair)"
fi

log "installing runtime dependencies"
"${PIP[@]}" install -q "setuptools<81" wheel "numpy>=1.24" "fvcore>=0.1.5" "iopath>=0.1.9" \
  "pycocotools>=2.0.6" yacs termcolor tabulate cloudpickle tqdm tensorboard "omegaconf>=2.1" \
  "hydra-core>=1.1" matplotlib Pillow "numba>=0.59" "scikit-learn>=1.2" "scikit-image>=0.21" "pytest>=7" "pytest-xdist>=3" flake8 \
  || die "installing the runtime dependencies failed"

if "$PY" -c "import detectron2.modeling, detectron2.engine" 2>/dev/null; then
  log "detectron2 already importable: left alone ($("$PY" -c 'import detectron2,os;print(os.path.dirname(detectron2.__file__))'))"
else
  # The index has no `detectron2`; `sal-detectron2` is its pure-Python code, published only as a
  # cp310 wheel although it is pure Python. Download it, re-tag it py3-none-any, install it.
  log "installing Detectron2 from $D2_SPEC"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 "$D2_SPEC" -d "$TMP" \
    || die "downloading $D2_SPEC failed (is the package index reachable?)"
  WHL="$(ls "$TMP"/*.whl | head -n1)"
  [[ -n "$WHL" ]] || die "no wheel was downloaded for $D2_SPEC"
  NEW="${WHL/cp310-none-any/py3-none-any}"
  [[ "$NEW" == "$WHL" ]] || mv "$WHL" "$NEW"
  "${PIP[@]}" install -q --no-deps "$NEW" || die "installing $NEW failed"
fi

# The wheel also ships a stray top-level `tools` package that would shadow this project's tools/.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [[ -d "$SITE/tools" ]]; then
  log "removing stray site-packages/tools left by the Detectron2 wheel"
  rm -rf "$SITE/tools"
fi

log "installing ssprl_d2 in editable mode"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" || die "pip install -e $ROOT failed"

"$PY" - <<'PYEOF' || die "the environment does not import (see the traceback above)"
import torch, torchvision, detectron2, fvcore, iopath, pycocotools, numba  # noqa: F401
from detectron2.modeling import build_model  # noqa: F401
import ssprl_d2  # noqa: F401
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"detectron2 {detectron2.__version__}")
PYEOF
touch "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
