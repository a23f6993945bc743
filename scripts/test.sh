#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: lint,
# then pytest. Extra arguments go to pytest. "No tests ran" is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
