"""Request priority: the classes the batch former serves, most urgent first.

Lower is more urgent (Triton's convention), from ``MOST_URGENT`` to
``LEAST_URGENT``; a request that names none is ``DEFAULT``, so callers can
both raise and lower theirs. The policy (csrc/batch_former.h) serves the most
urgent class waiting; a request that has waited
``BatchingConfig.max_priority_wait_ms`` counts as the most urgent, so no class
starves. The range is the native core's, read from the extension.
"""

from __future__ import annotations

import numbers
from typing import Any

from textfleet.engine import _native
from textfleet.engine.errors import InputError, short_repr

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
