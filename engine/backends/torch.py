"""torch backend: runs the original safetensors weights with transformers, on CPU or CUDA.

Used to check the ONNX graph against torch, as a runtime of its own, and as
the GPU path when onnxruntime's CUDA provider is not installed. It needs the
model directory to keep its weights (``textfleet export --safetensors``).

- ``cpu``: float32; ``torch.set_num_threads(threads)``, which is process-wide.
- ``cuda`` / ``cuda:N``: float16 weights and activations (half the memory, tensor cores),
  inputs copied to the GPU per batch and outputs returned as float32 numpy.
  Outputs then differ from the float32 graph by fp16 rounding (about 1e-3
  relative on logits), which is the tolerance the GPU check uses.

torch and transformers are imported only when this backend loads.
"""

from __future__ import annotations

import numpy as np

from textfleet.engine.batch import Batch
from textfleet.engine.config import cuda_index
from textfleet.engine.errors import ModelDirError
from textfleet.engine.model_dir import SAFETENSORS_FILE, ModelDir
from textfleet.engine.tasks.registry import get_task


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model_dir: ModelDir,
        device: str = "cpu",
        threads: int = 1,
        solo_threads: int | None = None,  # unused: torch's thread count is process-wide
    ):
        self.model_dir = model_dir
        self.device = device
        self.threads = threads
        self.gpu = cuda_index(device)  # None on the CPU
        self.dtype = "float32" if self.gpu is None else "float16"
        self._model = None
        self._inputs: list[str] = list(model_dir.info.inputs)

    def load(self) -> None:
        if self._model is not None:
            return
        if self.model_dir.safetensors_path is None:
            raise ModelDirError(
                f"{self.model_dir.path / SAFETENSORS_FILE} is missing: the torch backend needs "
                "the weights (export with --safetensors)"
            )
        import torch
        import transformers

        if self.gpu is not None and self.gpu >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {self.device!r} needs a CUDA build of torch and GPU {self.gpu} visible; "
                f"this torch ({torch.__version__}) sees {torch.cuda.device_count()} GPU(s)"
            )
        if self.gpu is None:
            torch.set_num_threads(self.threads)
        transformers.utils.logging.disable_progress_bar()
        auto = getattr(transformers, get_task(self.model_dir.info.task).auto_class)
        model = auto.from_pretrained(
            str(self.model_dir.path), use_safetensors=True, dtype=getattr(torch, self.dtype)
        )
        self._model = model.to(self.device).eval()

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        if self._model is None:
            raise RuntimeError("torch backend is not loaded")
        import torch

        feeds = {n: torch.from_numpy(getattr(batch, n)).to(self.device) for n in self._inputs}
        with torch.inference_mode():
            out = self._model(**feeds)
        return {
            name: getattr(out, name).float().cpu().numpy() for name in self.model_dir.info.outputs
        }

    def health(self) -> bool:
        return self._model is not None

    def unload(self) -> None:
        self._model = None
        if self.gpu is not None:
            import torch

            torch.cuda.empty_cache()
