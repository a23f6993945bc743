"""Convert a Keras ``TFBert*`` ``tf_model.h5`` into a PyTorch (Hugging Face) state dict.

transformers 5 has no TensorFlow loader and TensorFlow is too heavy to install
for a one-off read, so the HDF5 file is read with h5py and the names mapped:

    <group>/<model scope>/bert/encoder/layer_._3/attention/self/query/kernel:0
    -> bert.encoder.layer.3.attention.self.query.weight   (kernel transposed)

Keras ``Dense`` kernels are [in, out], torch ``Linear`` weights [out, in]:
hence the transpose. LayerNorm ``gamma``/``beta`` are ``weight``/``bias``;
embedding tables are stored untransposed. Arrays stay numpy (no torch needed);
``safetensors.numpy`` writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textfleet.engine.errors import ModelDirError


def torch_name(h5_name: str) -> tuple[str, bool]:
    """The torch parameter name for one HDF5 dataset name, and whether to transpose it."""
    parts = h5_name.removesuffix(":0").split("/")
    # parts[0] is the Keras layer group, parts[1] the model scope: drop both.
    if len(parts) < 4:
        raise ModelDirError(f"unexpected weight name in tf_model.h5: {h5_name}")
    path = [p.replace("layer_._", "layer.") for p in parts[2:]]
    leaf = path[-1]
    transpose = leaf == "kernel"
    if leaf in ("kernel", "gamma"):
        path[-1] = "weight"
    elif leaf == "beta":
        path[-1] = "bias"
    elif leaf == "embeddings":  # position/token_type tables: Keras "embeddings", torch "weight"
        path[-1] = "weight"
    return ".".join(path), transpose


def read_tf_bert_h5(h5_path: Path) -> dict[str, np.ndarray]:
    """All weights of a TF BERT checkpoint as a torch-named state dict (float32, contiguous)."""
    import h5py

    state: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        key, transpose = torch_name(name)
        array = np.asarray(obj[()], dtype=np.float32)
        if key in state:
            raise ModelDirError(f"{h5_path}: two weights map to {key}")
        state[key] = np.ascontiguousarray(array.T if transpose else array)

    with h5py.File(h5_path, "r") as f:
        f.visititems(visit)
    if not state:
        raise ModelDirError(f"{h5_path}: no weights found")
    return state
