"""textfleet engine: model directories, native tokenization, batching, backends, task heads."""

from textfleet.engine.batch import Batch
from textfleet.engine.config import BatchingConfig
from textfleet.engine.engine import Engine
from textfleet.engine.errors import EngineError, InputError, ModelDirError, Overloaded, TooLarge
from textfleet.engine.model_dir import ModelDir, ModelInfo
from textfleet.engine.tokenizer import Encoding, Tokenizer

__all__ = [
    "Batch",
    "BatchingConfig",
    "Encoding",
    "Engine",
    "EngineError",
    "InputError",
    "ModelDir",
    "ModelDirError",
    "ModelInfo",
    "Overloaded",
    "TooLarge",
    "Tokenizer",
]
