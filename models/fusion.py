"""onnxruntime's transformer optimizer over an exported BERT graph (``export --fuse``).

``onnxruntime.transformers.optimizer`` (model_type ``bert``, Python fusions only,
opt_level 0, so the file stays portable across execution providers) rewrites
known subgraphs into com.microsoft kernels: SkipLayerNormalization (residual
add + layer norm), BiasGelu, and Attention / EmbedLayerNormalization where the
exported pattern is one it knows. The fused graph replaces the exported one
only after it answered like it on a padded batch, within fp32 tolerance:
a fused kernel sums in another order, it must not compute something else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from textfleet.models.source import ExportError

log = logging.getLogger(__name__)

# Largest difference to the unfused graph, relative to the output's magnitude.
FUSION_RTOL = 1e-4


def probe_batch(inputs: list[str], vocab_size: int) -> dict[str, np.ndarray]:
    """Three rows of different lengths, padded: real and padded positions both occur."""
    rng = np.random.default_rng(0)
    lengths, width = [5, 17, 9], 17
    ids = rng.integers(1000, max(1001, min(vocab_size, 30000)), size=(3, width))
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    batch = {
        "input_ids": (ids * mask).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": np.zeros((3, width), np.int64),
    }
    return {name: batch[name] for name in inputs}


def max_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Largest |a - b| over real tokens (token-level outputs) or all of it, relative."""
    if a.ndim == 3:
        keep = mask.astype(bool)
        a, b = a[keep], b[keep]
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(a).max())))


def run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def fuse_onnx(path: Path, config: dict[str, Any], inputs: list[str]) -> dict[str, int]:
    """Replace the graph at ``path`` by its fused version; return the fusions made."""
    from onnxruntime.transformers.optimizer import optimize_model

    path = Path(path)
    fused_path = path.with_name(path.stem + ".fused.onnx")
    model = optimize_model(
        str(path),
        model_type="bert",
        num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
        opt_level=0,
        use_gpu=False,
    )
    fusions = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    try:
        model.save_model_to_file(str(fused_path))
        feeds = probe_batch(inputs, int(config.get("vocab_size", 30522)))
        diff = max_difference(run(path, feeds), run(fused_path, feeds), feeds["attention_mask"])
        if diff > FUSION_RTOL:
            raise ExportError(
                f"--fuse: the fused graph differs from the exported one by {diff:.2e} "
                f"(relative; tolerance {FUSION_RTOL:.0e}); export without --fuse"
            )
        os.replace(fused_path, path)
    finally:
        fused_path.unlink(missing_ok=True)
    log.info("fused %s: %s (max relative difference %.1e)", path, fusions, diff)
    return fusions
