#!/usr/bin/env bash
# Create .venv and install emodebias with the CPU PyTorch wheel pinned (no CUDA build is pulled).
# Usage: bash scripts/setup.sh [extras]   e.g. extras="test,speaker,ray"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Pin torch first, so that nothing later pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# resemblyzer declares `webrtcvad`, which needs a compiler; webrtcvad-wheels provides the same module.
if [[ ",$extras," == *",speaker,"* ]]; then
  .venv/bin/python -m pip install --quiet "webrtcvad-wheels>=2.0" "librosa>=0.10"
  .venv/bin/python -m pip install --quiet --no-deps "resemblyzer>=0.1.4"
  extras=$(echo ",$extras," | sed 's/,speaker,/,/; s/^,//; s/,$//')
fi
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install --quiet -e ".[${extras}]" "torch==2.13.0"
else
  .venv/bin/python -m pip install --quiet -e . "torch==2.13.0"
fi
