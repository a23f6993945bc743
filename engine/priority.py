"""Request priority: the classes the batch former serves, most urgent first.

Lower is more urgent (Triton's convention), from ``MOST_URGENT`` to
``LEAST_URGENT``; a request that names none is ``DEFAULT``, so callers can
both raise and lower theirs. The policy (csrc/batch_former.h) serves the most
urgent class waiting; a request that has waited
``BatchingConfig.max_priority_wait_ms`` counts as the most urgent, so no class
starves. The range is the native core's, read from the extension.

Admission keeps headroom for urgent work (``admission_share``): a class less
urgent than the default may fill only its share of the queue bound, down to
``BatchingConfig.least_urgent_queue_share`` for the least urgent, so a flood of
bulk requests leaves room for the default and more urgent ones. Traffic that
names no priority is admitted as it would be without classes.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

from textfleet.engine import _native
from textfleet.engine.errors import InputError, short_repr

if TYPE_CHECKING:
    from textfleet.engine.config import BatchingConfig

MOST_URGENT: int = _native.PRIORITY_MOST_URGENT
LEAST_URGENT: int = _native.PRIORITY_LEAST_URGENT
DEFAULT: int = _native.PRIORITY_DEFAULT


def check_priority(value: Any, field: str = "priority") -> int | None:
    """``value`` as a priority class (None stays None: the default class); anything but
    an integer in range is an InputError naming ``field`` and the range."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not MOST_URGENT <= value <= LEAST_URGENT
    ):
        raise InputError(
            field,
            f"expected an integer from {MOST_URGENT} (most urgent) to {LEAST_URGENT} "
            f"(least urgent; {DEFAULT} when not given), got {short_repr(value)}",
        )
    return int(value)


def admission_share(priority: int | None, batching: BatchingConfig) -> float:
    """The share of the queue bound that requests of class ``priority`` (None: the
    default class) may fill: 1 for the default class and the more urgent ones,
    ``least_urgent_queue_share`` for the least urgent, in even steps between. 1 for
    every class where the batch former ignores classes (``max_priority_wait_ms`` 0):
    an urgent request let in there would wait behind the others anyway.

    Anchored at the default class, not the most urgent: traffic that names no
    priority keeps the whole queue, as before classes existed."""
    p = DEFAULT if priority is None else priority
    if batching.max_priority_wait_ms <= 0 or p <= DEFAULT:
        return 1.0
    step = (p - DEFAULT) / (LEAST_URGENT - DEFAULT)
    return 1.0 - (1.0 - batching.least_urgent_queue_share) * step


def class_queue_tokens(batching: BatchingConfig) -> list[int]:
    """Per class, most urgent first: the queued tokens past which the scheduler refuses
    its requests (``max_queue_tokens`` times the class's ``admission_share``)."""
    bound = batching.max_queue_tokens
    return [
        max(1, round(bound * admission_share(p, batching)))
        for p in range(MOST_URGENT, LEAST_URGENT + 1)
    ]
