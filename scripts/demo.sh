#!/usr/bin/env bash
# Set up .venv (CPU torch pinned) and run the main job: the whole pipeline on the built-in
# synthetic corpus, ending in a report (see `emodebias demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/emodebias demo "$@"
