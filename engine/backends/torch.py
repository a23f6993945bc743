"""torch backend: runs the original safetensors weights with transformers, on CPU or CUDA.

Used to check the ONNX graph against torch, as a runtime of its own, and as
the GPU path when onnxruntime's CUDA provider is not installed. It needs the
model directory to keep its weights (``textfleet export --safetensors``).

- ``cpu``: float32; ``torch.set_num_threads(threads)``, which is process-wide.
- ``cuda`` / ``cuda:N``: float16 weights and activations (half the memory, tensor
  cores). Per batch, the inputs are copied to the GPU with their width padded up
  to a multiple of ``CUDA_WIDTH_MULTIPLE`` (masked columns: the real tokens'
  results do not change), so that dynamic batching produces fewer distinct shapes.
  An embedding model pools (and normalises) on the GPU in float32 and returns
  ``POOLED`` [rows, dim] (engine/heads.py), since copying the whole hidden state
  to the host costs more than the model; other outputs come back as float16 and
  widen to float32 on the host (exact, half the bytes over the bus).
  Loading turns cuDNN's attention kernel off, process-wide: it builds a graph for
  every new input shape, once per thread, which under dynamic batching (shapes
  rarely repeat) costs more than attention itself; flash and memory-efficient
  attention need no such step. torch's ``sdpa_kernel`` context is no per-call
  alternative: it flips the same process-wide flags, so one thread leaving it
  turns cuDNN back on under another.
  Outputs differ from the float32 graph by fp16 rounding, about 1e-3 of the
  outputs' scale: a classifier's logits (up to ~13 in magnitude) moved by up to
  0.02 absolute and its probabilities by up to 0.004; embeddings keep a cosine
  above 0.99999 to the float32 ones.

torch and transformers are imported only when this backend loads.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from textfleet.engine.batch import Batch
from textfleet.engine.config import cuda_index
from textfleet.engine.errors import ModelDirError
from textfleet.engine.heads import POOLED
from textfleet.engine.model_dir import SAFETENSORS_FILE, ModelDir
from textfleet.engine.tasks.registry import get_task

CUDA_WIDTH_MULTIPLE = 8
"""Batch widths on a GPU are rounded up to this: fewer distinct shapes for the
kernels' per-shape setup and tensor-core friendly; padding is nearly free there."""


def pad_width(arrays: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """[rows, width] arrays padded with zeros (mask 0: ignored) to a multiple of width."""
    width = next(iter(arrays.values())).shape[1]
    extra = -width % multiple
    if not extra:
        return arrays
    return {name: np.pad(a, ((0, 0), (0, extra))) for name, a in arrays.items()}


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        model_dir: ModelDir,
        device: str = "cpu",
        threads: int = 1,
        solo_threads: int | None = None,  # unused: torch's thread count is process-wide
        *,
        pool_on_device: bool | None = None,
        width_multiple: int | None = None,
    ):
        """``pool_on_device`` (embedding models; None: on CUDA) returns ``POOLED``
        vectors instead of the hidden state; ``width_multiple`` (None: 8 on CUDA, else
        1) pads batch widths, when the model takes an attention mask."""
        info = model_dir.info
        self.model_dir = model_dir
        self.device = device
        self.threads = threads
        self.gpu = cuda_index(device)  # None on the CPU
        self.dtype = "float32" if self.gpu is None else "float16"
        self._model = None
        self._pool = None  # pooling on the device, set at load when pool_on_device
        self._inputs: list[str] = list(info.inputs)
        on_gpu = self.gpu is not None
        self.pool_on_device = get_task(info.task).pooled and (
            on_gpu if pool_on_device is None else pool_on_device
        )
        masked = "attention_mask" in self._inputs
        default_multiple = CUDA_WIDTH_MULTIPLE if on_gpu else 1
        self.width_multiple = (width_multiple or default_multiple) if masked else 1

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
        else:
            torch.backends.cuda.enable_cudnn_sdp(False)  # see the module docstring
        transformers.utils.logging.disable_progress_bar()
        auto = getattr(transformers, get_task(self.model_dir.info.task).auto_class)
        model = auto.from_pretrained(
            str(self.model_dir.path), use_safetensors=True, dtype=getattr(torch, self.dtype)
        )
        self._model = model.to(self.device).eval()
        if self.pool_on_device:
            from textfleet.engine.backends.torch_pooling import pool

            info = self.model_dir.info
            self._pool = partial(pool, pooling=info.pooling or "mean", normalize=info.normalize)

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        if self._model is None:
            raise RuntimeError("torch backend is not loaded")
        import torch

        arrays = pad_width({n: getattr(batch, n) for n in self._inputs}, self.width_multiple)
        feeds = {n: torch.from_numpy(a).to(self.device) for n, a in arrays.items()}
        outputs = self.model_dir.info.outputs
        with torch.inference_mode():
            out = self._model(**feeds)
            if self._pool is not None:
                mask = feeds.get("attention_mask")
                if mask is None:  # unmasked model: no width padding either
                    mask = torch.from_numpy(batch.attention_mask).to(self.device)
                return {POOLED: self._pool(getattr(out, outputs[0]), mask).cpu().numpy()}
        return {name: self._to_host(getattr(out, name), batch.width) for name in outputs}

    @staticmethod
    def _to_host(tensor, width: int) -> np.ndarray:
        """float32 numpy, cut back to the batch's width where the output has a token axis."""
        if tensor.ndim == 3:
            tensor = tensor[:, :width]
        return tensor.cpu().numpy().astype(np.float32, copy=False)

    def release_memory(self) -> None:
        """Hand the CUDA caching allocator's free blocks back to the device."""
        if self.gpu is not None:
            import torch

            torch.cuda.empty_cache()

    def health(self) -> bool:
        return self._model is not None

    def unload(self) -> None:
        self._model = self._pool = None
        if self.gpu is not None:
            import torch

            torch.cuda.empty_cache()
