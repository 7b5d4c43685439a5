#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, end-to-end checks included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2
# Two worker processes (pytest-xdist), each test file whole in one of them: the tests are
# small models whose steps are mostly Python, so two processes use both cores. The files
# with end-to-end tests go first (tests/conftest.py; xdist would start them last).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests "$@"
