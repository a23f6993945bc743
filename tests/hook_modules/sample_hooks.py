"""Hooks and graph python steps the tests' models.yaml entries name (tests/test_hooks*.py,
tests/test_graphs*.py).

This folder is on the test process's path and on the Ray workers' PYTHONPATH
(tests/conftest.py), as a user's hook modules must be on the replicas' path.
"""

from __future__ import annotations

import numpy as np

from textfleet.engine.errors import InputError


def lowercase(texts: list[str]) -> list[str]:
    return [t.lower() for t in texts]


def picky(
    texts: list[str], prefix: str = "", refuse: str = "reject", crash: str = "crash"
) -> list[str]:
    """Lowercases and puts ``prefix`` before each text (the test models are uncased: the
    prefix shows the hook ran); a text equal to ``refuse`` is the client's error,
    ``crash`` a bug."""
    for i, t in enumerate(texts):
        if t == refuse:
            raise InputError(f"texts[{i}]", f"{refuse!r} is refused by the preprocess hook")
        if t == crash:
            raise RuntimeError("the hook fell over")
    return [prefix + t.lower() for t in texts]


def lowercase_pairs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(q.lower(), d.lower()) for q, d in pairs]


def drop_last(texts: list[str]) -> list[str]:
    return texts[:-1]


class AddNorm:
    """Adds ``norm``: each embedding's L2 norm times ``scale`` (FP32 [n]); counts its builds."""

    built = 0

    def __init__(self, scale: float = 1.0):
        type(self).built += 1
        self.scale = scale

    def __call__(self, outputs: dict[str, np.ndarray], texts: list[str]) -> dict:
        norm = np.linalg.norm(outputs["embedding"], axis=1) * self.scale
        return {**outputs, "norm": norm.astype(np.float32)}


class RenameLabels:
    """Maps the classifier's labels through ``names`` and adds ``length`` (INT64 [n])."""

    def __init__(self, names: dict[str, str]):
        self.names = names

    def __call__(self, outputs: dict[str, np.ndarray], texts: list[str]) -> dict:
        labels = np.vectorize(lambda x: self.names.get(x, x), otypes=[object])(outputs["label"])
        return {**outputs, "label": labels, "length": np.array([len(t) for t in texts])}


def undeclared(outputs: dict[str, np.ndarray], texts: list[str]) -> dict:
    return {**outputs, "surprise": np.zeros(len(texts), np.float32)}


def halve_rows(outputs: dict[str, np.ndarray], texts: list[str]) -> dict:
    return {name: arr[: len(arr) // 2] for name, arr in outputs.items()}


def as_list(outputs: dict[str, np.ndarray], texts: list[str]) -> list:
    return list(outputs.values())


async def not_a_thread_hook(texts: list[str]) -> list[str]:
    return texts


# ---------------------------------------------------------------- graph python steps
# (tests/test_graphs.py, test_graphs_serving.py): one dict of inputs in, a dict out.


def label_and_clip(inputs: dict, chars: int = 12) -> dict:
    """Each text cut to ``chars`` and lowercased, after its label when the step reads
    one (``"sports: row 3: ball"``), and each text's length; a text equal to "reject"
    is the client's error, "crash" a bug."""
    texts, labels = inputs["text"], inputs.get("label")
    for i, t in enumerate(texts):
        if t == "reject":
            raise InputError(f"text[{i}]", "'reject' is refused by the python step")
        if t == "crash":
            raise RuntimeError("the python step fell over")
    clipped = [t[:chars].lower() for t in texts]
    if labels is not None:
        clipped = [f"{label}: {t}" for label, t in zip(labels, clipped, strict=True)]
    return {"text": clipped, "length": np.array([len(t) for t in texts])}


def one_row_short(inputs: dict) -> dict:
    return {"text": inputs["text"][:-1], "length": [len(t) for t in inputs["text"][:-1]]}


def misnamed(inputs: dict) -> dict:
    return {"txt": inputs["text"], "length": [len(t) for t in inputs["text"]]}


def thread_name(inputs: dict) -> dict:
    """The thread each row's call ran in (a python step runs off the event loop)."""
    import threading

    return {"thread": [threading.current_thread().name] * len(inputs["text"])}
