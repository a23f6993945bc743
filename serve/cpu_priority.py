"""Running a replica in the background of the machine's CPUs (a shadow's replicas).

A shadow doubles the work of the requests it mirrors. On the cores the primary
uses, at the same priority, that work competes with the primary's next
requests: one client's p50 more than doubled with a 100% shadow on 2 cores.
A background replica runs every thread under Linux's ``SCHED_IDLE`` policy
(and at nice 19, which ``ps`` shows): the kernel gives the primary the cores
whenever it wants them, and the shadow computes in the time left over. Under
saturation the shadow falls behind, its mirrors reach ``max_in_flight`` and
further ones are dropped and counted (serve/shadow.py), instead of slowing the
primary.

Nice 19 alone is not enough: Ray starts its workers, every replica among them,
at nice 15, and the scheduler weighs nice 15 against nice 19 only 36 to 15, so
a shadow still took about a third of a core the primary wanted. Measured on 2
cores, one client, MiniLM behind a versioned model's router with a 100% shadow:
p50 +17.5 ms over the version's own route with nice 19, +5.9 ms with
``SCHED_IDLE`` (the router's own hop is about 3 ms of that).

Linux keeps the policy and nice value per thread: every thread the process has
is set, and threads started later (onnxruntime's pools, Ray's) inherit them from
the thread that starts them. Going back (a shadow promoted to a version) restores
the normal policy and the nice value the process had; that needs CAP_SYS_NICE or
a RLIMIT_NICE that allows it; without either the replica says so in its log and
stays in the background until restarted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("textfleet.serve")

BACKGROUND_ARG = "background"
"""The ``user_config`` key of a version's deployment: true for a shadow."""

BACKGROUND_NICE = 19
_MAX_PASSES = 10
_normal_nice: int | None = None
"""The nice value the process had before it went to the background (Ray's: 15)."""


def set_background(on: bool) -> int:
    """Every thread of this process in the background (``SCHED_IDLE``, nice 19) or
    back to the normal policy and nice value; the number of threads that could not
    be set (not allowed)."""
    global _normal_nice
    if on and _normal_nice is None and not is_background():
        _normal_nice = os.getpriority(os.PRIO_PROCESS, 0)
    nice = BACKGROUND_NICE if on else (_normal_nice if _normal_nice is not None else 0)
    policy = os.SCHED_IDLE if on else os.SCHED_OTHER
    # A thread that starts another while the list is walked (an onnxruntime or Ray
    # pool growing) may hand it the old value: walk again until a pass changes nothing.
    denied: set[int] = set()
    for _ in range(_MAX_PASSES):
        changed = False
        for tid in _thread_ids():
            if tid in denied:
                continue
            try:
                changed |= _set_thread(tid, policy, nice)
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            except PermissionError:
                denied.add(tid)
        if not changed:
            break
    if denied:
        log.warning(
            "could not set %d thread(s) to the %s priority (raising a priority needs "
            "CAP_SYS_NICE or RLIMIT_NICE); restart the replica to run it at the normal one",
            len(denied),
            "background" if on else "normal",
        )
    return len(denied)


def _set_thread(tid: int, policy: int, nice: int) -> bool:
    """Whether the thread's policy or nice value had to change."""
    changed = False
    if os.sched_getscheduler(tid) != policy:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
        changed = True
    if os.getpriority(os.PRIO_PROCESS, tid) != nice:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        changed = True
    return changed


def is_background() -> bool:
    """Whether the calling thread runs in the background."""
    return os.sched_getscheduler(0) == os.SCHED_IDLE


def _thread_ids() -> list[int]:
    try:
        return [int(p.name) for p in Path("/proc/self/task").iterdir()]
    except OSError:  # no /proc: the process as a whole (one call covers it elsewhere)
        return [0]
