#!/usr/bin/env bash
# Creates .venv (once) with the CPU PyTorch build and the gpu-service package (editable, with test extras).
# Re-running is cheap: it only installs when gpu-service/pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating Python virtual environment in .venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$venv/.installed-$(sha256sum "$root/gpu-service/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing PyTorch (CPU build) and gpu-service dependencies" >&2
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    # torch==2.13.0 resolves to the CPU wheel this machine image carries (no multi-GB CUDA download).
    "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  fi
  "$venv/bin/python" -m pip install --quiet -e "$root/gpu-service[test,train]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
