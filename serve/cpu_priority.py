"""Running a replica in the background of the machine's CPUs (a shadow's replicas).

A shadow doubles the work of the requests it mirrors. On the cores the primary
uses, at the same priority, that work competes with the primary's next
requests: one client's p50 more than doubled with a 100% shadow on 2 cores.
A background replica runs every thread at the lowest priority (nice 19):
the kernel gives the primary the cores whenever it wants them, and the
shadow computes in the time left over. Under saturation the shadow falls
behind, its mirrors reach ``max_in_flight`` and further ones are dropped and
counted (serve/shadow.py), instead of slowing the primary.

Linux keeps a nice value per thread: every thread the process has is set, and
threads started later (onnxruntime's pools, Ray's) inherit it from the thread
that starts them. Going back to the normal priority (a shadow promoted to a
version) needs CAP_SYS_NICE or a RLIMIT_NICE that allows it; without either
the replica says so in its log and stays in the background until restarted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("textfleet.serve")

BACKGROUND_ARG = "background"
"""The ``user_config`` key of a version's deployment: true for a shadow."""

BACKGROUND_NICE = 19
NORMAL_NICE = 0
_MAX_PASSES = 10


def set_background(on: bool) -> int:
    """Every thread of this process at nice 19 (``on``) or 0; the number of threads
    whose priority could not be set (not allowed)."""
    nice = BACKGROUND_NICE if on else NORMAL_NICE
    # A thread that starts another while the list is walked (an onnxruntime or Ray
    # pool growing) may hand it the old value: walk again until a pass changes nothing.
    denied: set[int] = set()
    for _ in range(_MAX_PASSES):
        changed = False
        for tid in _thread_ids():
            if tid in denied:
                continue
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) != nice:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)
                    changed = True
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            except PermissionError:
                denied.add(tid)
        if not changed:
            break
    if denied:
        log.warning(
            "could not set %d thread(s) to nice %d (raising a priority needs CAP_SYS_NICE "
            "or RLIMIT_NICE); restart the replica to run it at the normal priority",
            len(denied),
            nice,
        )
    return len(denied)


def is_background() -> bool:
    """Whether the calling thread runs at the background priority."""
    return os.getpriority(os.PRIO_PROCESS, 0) >= BACKGROUND_NICE


def _thread_ids() -> list[int]:
    try:
        return [int(p.name) for p in Path("/proc/self/task").iterdir()]
    except OSError:  # no /proc: the process as a whole (one call covers it elsewhere)
        return [0]
