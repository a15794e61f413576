"""How torch's OpenMP threads wait, chosen before torch is imported.

torch's CPU kernels run their threads through OpenMP (GNU libgomp in the Linux wheels). Between
parallel regions an idle thread spins for a while before it sleeps (libgomp: 300,000 spins by
default). On a machine whose cores also run other jobs, a spinning thread takes the core from
the thread that the region waits for: on the 2-core development machine with other jobs
running, a ``cpu-quick`` training step with two torch threads took 15-21 s (4.5-5.2 s of CPU
time) against 0.6-1.5 s with passive waiting and 2.3-2.8 s with one thread; on the same machine
idle, passive waiting made the step 1.6x slower than spinning (docs/performance.md, "Threads on
a busy machine").

The OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this module sets it
(``PASSIVE``: an idle thread sleeps at once) when ``convlstm_vp`` is imported before torch, the
environment does not set it already, and other tasks are runnable on the machine at that moment
(:func:`other_runnable`); on an idle machine the default stays. Importing torch first, or setting ``OMP_WAIT_POLICY``
yourself, keeps that choice; :func:`describe` says which one holds (the training log prints it).
"""

from __future__ import annotations

import os
import sys
import time

VARIABLE = "OMP_WAIT_POLICY"
# Other runnable tasks (on average over a few samples) from which the cores count as shared.
BUSY = 0.5
_state: dict = {"how": "unset", "others": None}


def other_runnable(samples: int = 5, gap_s: float = 0.01) -> float | None:
    """Mean number of runnable tasks besides this process, from Linux's /proc/loadavg (its
    instantaneous ``running/total`` field, unlike the load averages, which lag a finished job by
    minutes); None where that file is missing or unreadable."""
    counts = []
    try:
        for i in range(samples):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i + 1 < samples:
                time.sleep(gap_s)
    except (OSError, ValueError, IndexError):
        return None
    return sum(counts) / len(counts)


def configure(others: float | None = None) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other jobs run on the machine at start (``others``:
    their count, measured by :func:`other_runnable` when None), unless the environment sets the
    policy or torch is loaded already. On an idle machine the OpenMP default (spinning) stays:
    there passive waiting makes each parallel region wake its threads from sleep, which slowed a
    two-thread training step 1.6x (docs/performance.md, "Threads on a busy machine")."""
    if VARIABLE in os.environ:
        _state["how"] = "environment"
    elif "torch" in sys.modules:
        _state["how"] = "torch first"
    else:
        others = other_runnable() if others is None else others
        _state["others"] = others
        if others is not None and others >= BUSY:
            os.environ[VARIABLE] = "PASSIVE"
            _state["how"] = "set"
        else:
            _state["how"] = "idle"


def describe(threads: int) -> str:
    """One line for the log: the torch thread count and how the OpenMP threads wait."""
    others = _state["others"]
    seen = "unknown" if others is None else f"{others:.1f}"
    how = {
        "set": f"passively ({VARIABLE}=PASSIVE, set by convlstm_vp: {seen} other runnable tasks at start)",
        "idle": f"by the OpenMP default (spinning: {seen} other runnable tasks at start; set "
        f"{VARIABLE}=PASSIVE before starting Python if other jobs will share the cores)",
        "environment": f"as the environment says ({VARIABLE}={os.environ.get(VARIABLE)})",
        "torch first": f"by the OpenMP default (spinning; torch was imported before convlstm_vp; "
        f"set {VARIABLE}=PASSIVE before starting Python if other jobs share the cores)",
        "unset": "by the OpenMP default",
    }[_state["how"]]
    return f"{threads} torch thread{'s' if threads != 1 else ''}; idle OpenMP threads wait {how}"
