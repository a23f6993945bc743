"""torch backend (CPU): runs the original safetensors weights with transformers.

Used to check the ONNX graph against torch and as a fallback runtime. It needs
the model directory to keep its weights (``textfleet export --safetensors``).
torch and transformers are imported only when this backend loads. Note that
``torch.set_num_threads`` is process-wide.
"""

from __future__ import annotations

import numpy as np

from engine.batch import Batch
from engine.errors import ModelDirError
from engine.model_dir import SAFETENSORS_FILE, ModelDir


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir: ModelDir, device: str = "cpu", threads: int = 1):
        self.model_dir = model_dir
        self.device = device
        self.threads = threads
        self._model = None
        self._inputs: list[str] = list(model_dir.info.inputs)

    def load(self) -> None:
        if self._model is not None:
            return
        if self.device != "cpu":
            raise RuntimeError(
                f"the torch backend runs on cpu only for now, got device {self.device!r}"
            )
        if self.model_dir.safetensors_path is None:
            raise ModelDirError(
                f"{self.model_dir.path / SAFETENSORS_FILE} is missing: the torch backend needs "
                "the weights (export with --safetensors)"
            )
        import torch
        import transformers

        from engine.export import TASK_SPECS

        torch.set_num_threads(self.threads)
        transformers.utils.logging.disable_progress_bar()
        auto = getattr(transformers, TASK_SPECS[self.model_dir.info.task].auto_class)
        self._model = auto.from_pretrained(str(self.model_dir.path), use_safetensors=True).eval()

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        if self._model is None:
            raise RuntimeError("torch backend is not loaded")
        import torch

        feeds = {n: torch.from_numpy(getattr(batch, n)) for n in self._inputs}
        with torch.inference_mode():
            out = self._model(**feeds)
        return {name: getattr(out, name).float().numpy() for name in self.model_dir.info.outputs}

    def health(self) -> bool:
        return self._model is not None

    def unload(self) -> None:
        self._model = None
