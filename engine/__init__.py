"""textfleet engine: model directories, native tokenization, batching, backends, task heads."""

from engine.batch import Batch
from engine.engine import Engine
from engine.errors import EngineError, InputError, ModelDirError, Overloaded, TooLarge
from engine.model_dir import ModelDir, ModelInfo
from engine.tokenizer import Encoding, Tokenizer

__all__ = [
    "Batch",
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
__version__ = "0.1.0"
