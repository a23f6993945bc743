"""User code named in models.yaml: ``"pkg.module:function"`` or ``"pkg.module:Class"``.

A model's pre/post-processing hooks (and any other step of user code a config
names) are import paths resolved with ``importlib`` in the process that runs
them, a Ray Serve replica: nothing is pickled and nothing is evaluated, and
their ``args`` are plain JSON from the config. The module must be importable
there: installed into the replicas' Python environment, or in a folder on
their ``PYTHONPATH``.

Code loaded here runs with the privileges of the server process: whoever may
edit models.yaml may run code on the replicas.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
"""``module.path:attribute``: dotted Python identifiers, one colon, one attribute name."""

_CALL_RE = re.compile(CALL_PATTERN)


class LoadError(ImportError):
    """A call that cannot be resolved: bad import path, missing module or attribute,
    a class whose constructor failed, args that do not fit. The message names the call."""


def check_call(call: Any) -> str:
    """``call`` if it is a well-formed import path; ValueError otherwise."""
    if not isinstance(call, str) or not _CALL_RE.match(call):
        raise ValueError(
            f"got {call!r}; expected an import path 'package.module:name' "
            "(dotted Python identifiers, then ':' and a function or class name)"
        )
    return call


def load_callable(call: str, args: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """Resolve ``call`` to something to call.

    ``"pkg.module:function"``: the function with ``args`` bound as keyword arguments.
    ``"pkg.module:Class"``: ``Class(**args)``, built once here; the instance is called
    (it must define ``__call__``). Raises ``LoadError`` naming the call.
    """
    try:
        check_call(call)
    except ValueError as e:
        raise LoadError(str(e)) from None
    module_name, _, attr = call.partition(":")
    args = dict(args or {})
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error the module raised while importing
        raise LoadError(f"cannot import {call!r}: {type(e).__name__}: {e}") from e
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise LoadError(f"cannot import {call!r}: {module_name!r} has no {attr!r}") from None
    if inspect.isclass(target):
        _check_args(call, target, args)
        try:
            obj = target(**args)
        except Exception as e:
            raise LoadError(f"{call!r}: building it failed: {type(e).__name__}: {e}") from e
        if not callable(obj):
            raise LoadError(f"{call!r} is a class without __call__; its instance cannot be called")
        _check_sync(call, type(obj).__call__)
        return obj
    if not callable(target):
        raise LoadError(f"{call!r} is a {type(target).__name__}, not a function or a class")
    _check_sync(call, target)
    if not args:
        return target
    _check_args(call, target, args)
    return functools.partial(target, **args)


def _check_args(call: str, target: Callable[..., Any], args: dict[str, Any]) -> None:
    """``args`` must bind to ``target``'s keyword parameters (checked once, at load)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: let the call tell
        return
    try:
        signature.bind_partial(**args)
    except TypeError as e:
        raise LoadError(f"{call!r}: args do not fit its parameters: {e}") from None


def _check_sync(call: str, fn: Callable[..., Any]) -> None:
    # Hooks run in a thread, off the event loop; a coroutine function would only
    # return a coroutine there.
    if inspect.iscoroutinefunction(fn):
        raise LoadError(f"{call!r} is async; a hook is a plain function (it runs in a thread)")
