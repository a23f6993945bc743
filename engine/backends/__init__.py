"""Model runtimes behind one contract (base.py), registered by name.

The registry lives here, importing no backend, so the config schema can take
its choices from it and torch stays optional (a backend is imported when chosen).
"""

# name -> "module:Class"
BACKENDS = {
    "onnxruntime": "textfleet.engine.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "textfleet.engine.backends.torch:TorchBackend",
}
