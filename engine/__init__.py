"""textfleet engine: model directories, native tokenization, batching, backends, task heads."""

from engine.batch import Batch
from engine.tokenizer import Encoding, Tokenizer

__all__ = ["Batch", "Encoding", "Tokenizer"]
__version__ = "0.1.0"
