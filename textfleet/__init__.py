"""textfleet: serve NLP transformer models from a config file.

The public API of the engine, usable without Ray::

    from textfleet import Engine, Tokenizer
    engine = Engine.load("artifacts/models/all-MiniLM-L6-v2")

Layers (each imports only the ones below it; docs/ARCHITECTURE.md):
``textfleet.engine`` (model directories, native tokenizer and scheduler,
backends, task heads), ``textfleet.models`` (build time: export, import,
quantize, recipes), ``textfleet.serve`` (Ray Serve applications and
protocols), ``textfleet.cli`` (the ``textfleet`` command, on top).
"""

from textfleet.engine import (
    Batch,
    BatchingConfig,
    Encoding,
    Engine,
    EngineConfig,
    EngineError,
    EngineStats,
    InputError,
    ModelDir,
    ModelDirError,
    ModelInfo,
    Overloaded,
    Tokenizer,
    TooLarge,
)

__all__ = [
    "Batch",
    "BatchingConfig",
    "Encoding",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "InputError",
    "ModelDir",
    "ModelDirError",
    "ModelInfo",
    "Overloaded",
    "TooLarge",
    "Tokenizer",
]
__version__ = "0.1.0"
