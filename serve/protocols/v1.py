"""KServe V1 (TensorFlow Serving style): ``{"instances": [...]}`` -> ``{"predictions": [...]}``."""

from __future__ import annotations

from typing import Any

from textfleet.engine.errors import InputError
from textfleet.serve.protocols.common import Reply, as_mapping, check_count, dumps, loads, type_name


def parse_predict(body: bytes) -> list[Any]:
    """The instances of a V1 predict body (``instances``, or its alias ``inputs``)."""
    obj = as_mapping(loads(body), "body")
    key = "instances" if "instances" in obj else "inputs" if "inputs" in obj else None
    if key is None:
        raise InputError("instances", 'missing; send {"instances": [...]}')
    instances = obj[key]
    if not isinstance(instances, list):
        raise InputError(key, f"expected an array, got {type_name(instances)}")
    return instances


def texts_from_instances(instances: list[Any], max_texts: int, key: str = "text") -> list[str]:
    """Each instance is a string or an object with a string under ``key``."""
    check_count(len(instances), max_texts, "instances")
    texts = []
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            inst = inst.get(key)
            if not isinstance(inst, str):
                raise InputError(f"instances[{i}].{key}", "missing or not a string")
        elif not isinstance(inst, str):
            raise InputError(f"instances[{i}]", f"expected a string, got {type_name(inst)}")
        texts.append(inst)
    return texts


def predict_reply(predictions: Any) -> Reply:
    return Reply(200, dumps({"predictions": predictions}))


def model_status(name: str, ready: bool) -> dict[str, Any]:
    return {"name": name, "ready": ready}
