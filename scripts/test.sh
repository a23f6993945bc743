#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: lint,
# then pytest (the HTTP tests under both ingresses when HAProxy is installed),
# then the wheel check (scripts/wheel_check.sh: the built wheel installed and
# serving outside the source tree).
# Extra arguments go to pytest. "No tests ran" is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/ruff check . || exit 1
run_pytest() {
  .venv/bin/python -m pytest "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    return 1
  fi
  return "$rc"
}
# The suite serves through HAProxy when it is installed (server.ingress auto);
# then the HTTP tests run once more through Ray Serve's own proxy, the path of
# `serve run` and of machines without HAProxy.
run_pytest "$@" || exit $?
if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
  TEXTFLEET_INGRESS=ray-proxy run_pytest "$@" tests/test_serve_http.py tests/test_tasks_serving.py tests/test_bad_inputs.py tests/test_model_routes.py tests/test_versions_serving.py tests/test_dashboard.py || exit $?
fi
bash scripts/wheel_check.sh || exit 1
exit 0
