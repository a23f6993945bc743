"""textfleet engine: model directories, native tokenization, batching, backends, task heads."""

from textfleet.engine.batch import Batch
from textfleet.engine.config import BatchingConfig, EngineConfig
from textfleet.engine.engine import Engine
from textfleet.engine.errors import EngineError, InputError, ModelDirError, Overloaded, TooLarge
from textfleet.engine.model_dir import ModelDir, ModelInfo
from textfleet.engine.stats import EngineStats, Histogram
from textfleet.engine.tokenizer import Encoding, Tokenizer

__all__ = [
    "Batch",
    "BatchingConfig",
    "Encoding",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "Histogram",
    "InputError",
    "ModelDir",
    "ModelDirError",
    "ModelInfo",
    "Overloaded",
    "TooLarge",
    "Tokenizer",
]
