#!/usr/bin/env bash
# Set up .venv (CPU torch pinned, test + speaker + ray extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,speaker,ray
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
