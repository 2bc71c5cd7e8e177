#!/usr/bin/env bash
# Set up .venv (CPU torch pinned, test + speaker + ray extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,speaker,ray
# The report's browser test renders report.html in headless Chromium; install it where we may
# (root with apt-get). Without it that one test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ]; then
  (timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq chromium >/dev/null) \
    || echo "note: chromium could not be installed; the browser test will skip" >&2
fi
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
