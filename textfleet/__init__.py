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

from textfleet import engine as _engine
from textfleet.engine import *  # noqa: F403  (the engine's public names, listed once there)

__all__ = list(_engine.__all__)
__version__ = "0.1.0"
