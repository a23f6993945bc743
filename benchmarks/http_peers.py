"""The two peers textfleet's HTTP path is measured against, written the usual way.

1. ``fastapi``: the "just a REST API wrapper": FastAPI + uvicorn, a sync
   endpoint (FastAPI runs it in its thread pool), the ``tokenizers`` library
   and onnxruntime per request, ``.tolist()`` into a JSON response.
   Run as a process: ``python -m benchmarks.http_peers --model-dir D --port P``.
2. ``RayBatchPeer``: a Ray Serve deployment with ``@serve.batch(max_batch_size=32,
   batch_wait_timeout_s=0.005)``, the same tokenizer and onnxruntime, batches
   padded in arrival order.

Both read the same exported model directory as textfleet (model.onnx,
tokenizer.json, textfleet.json) and use the same onnxruntime thread count.
Both take ``{"texts": [...]}`` and answer ``{"embeddings": [[...], ...]}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel


class EmbedRequest(BaseModel):
    texts: list[str]


class PlainEmbedder:
    """Tokenize (pad to the longest in the call), run onnxruntime, mean-pool, normalize."""

    def __init__(self, model_dir: str, threads: int):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        d = Path(model_dir)
        info = json.loads((d / "textfleet.json").read_text())
        self.normalize = bool(info.get("normalize", True))
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.enable_truncation(int(info["max_length"]))
        self.tok.enable_padding()  # to the longest text of each call
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(d / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def embed(self, texts: list[str]) -> np.ndarray:
        encs = self.tok.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        hidden = self.session.run(None, {k: feeds[k] for k in self.input_names})[0]
        mask = feeds["attention_mask"][:, :, None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.normalize:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)


def fastapi_app(model_dir: str, threads: int):
    from fastapi import FastAPI

    model = PlainEmbedder(model_dir, threads)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/embed")
    def embed(req: EmbedRequest) -> dict:
        return {"embeddings": model.embed(req.texts).tolist()}

    return app


def ray_batch_peer():
    """The hand-written Ray Serve deployment (built lazily: importing Ray is slow)."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0})
    class RayBatchPeer:
        def __init__(self, model_dir: str, threads: int):
            self.model = PlainEmbedder(model_dir, threads)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def _embed(self, requests: list[list[str]]) -> list[list[list[float]]]:
            flat = [t for texts in requests for t in texts]
            vectors = self.model.embed(flat).tolist()
            out, start = [], 0
            for texts in requests:
                out.append(vectors[start : start + len(texts)])
                start += len(texts)
            return out

        async def __call__(self, request: Request) -> dict:
            if request.method == "GET":
                return {"ok": True}
            body = await request.json()
            return {"embeddings": await self._embed(body["texts"])}

    return RayBatchPeer


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="the FastAPI + uvicorn peer")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    uvicorn.run(
        fastapi_app(args.model_dir, args.threads),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


def ray_batch_app(args: dict):
    """Application builder of the Ray peer (its import path in a Ray Serve config)."""
    return ray_batch_peer().bind(args["model_dir"], int(args.get("threads", 2)))


if __name__ == "__main__":
    main()
