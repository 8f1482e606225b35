#!/usr/bin/env bash
# Creates .venv (once) with PyTorch and the gpu-service package (editable, with test extras).
# Re-running is cheap: it only installs when gpu-service/pyproject.toml changed since the last install.
#
# Which PyTorch build (the version is pinned: TORCH_VERSION):
#   1. TORCH_INDEX_URL set: from that index (e.g. https://download.pytorch.org/whl/cu128 for a CUDA build).
#   2. The pinned version is already available without downloading it (pip's find-links, e.g. a
#      machine image's wheel folder): that one, as pip resolves it by default.
#   3. A CUDA machine (nvidia-smi answers) or not Linux: the default index (PyPI's Linux wheels are
#      the CUDA build; macOS and Windows wheels are CPU builds).
#   4. Linux without CUDA: the CPU build from https://download.pytorch.org/whl/cpu, not PyPI's
#      multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
cpu_index="https://download.pytorch.org/whl/cpu"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating Python virtual environment in .venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
pip=("$venv/bin/python" -m pip)

install_torch() {
  local spec="torch==$torch_version"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    echo "[setup] installing $spec from TORCH_INDEX_URL=$TORCH_INDEX_URL" >&2
    "${pip[@]}" install --quiet --index-url "$TORCH_INDEX_URL" "$spec"
  elif "${pip[@]}" install --quiet --dry-run --no-index --no-deps "$spec" >/dev/null 2>&1; then
    echo "[setup] installing $spec (available on this machine)" >&2
    "${pip[@]}" install --quiet "$spec"
  elif { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; } || [ "$(uname -s)" != "Linux" ]; then
    echo "[setup] installing $spec from the default index" >&2
    "${pip[@]}" install --quiet "$spec"
  else
    echo "[setup] no CUDA GPU here (nvidia-smi): installing the CPU build of $spec from $cpu_index" \
         "(set TORCH_INDEX_URL to choose another index)" >&2
    "${pip[@]}" install --quiet --index-url "$cpu_index" "$spec"
  fi
}

pyproject_hash="$("$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$root/gpu-service/pyproject.toml")"
stamp="$venv/.installed-$pyproject_hash"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing PyTorch and gpu-service dependencies" >&2
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    install_torch
  fi
  "${pip[@]}" install --quiet -e "$root/gpu-service[test,train]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
