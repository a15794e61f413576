"""How torch's OpenMP threads wait, chosen before torch is imported.

torch's CPU kernels run their threads through OpenMP (GNU libgomp in the Linux wheels). Between
parallel regions an idle thread spins for a while before it sleeps (libgomp: 300,000 spins by
default). On a machine whose cores also run other jobs, a spinning thread takes the core from
the thread that the region waits for: on the 2-core development machine with other jobs
running, a ``cpu-quick`` training step with two torch threads took 15-21 s (4.5-5.2 s of CPU
time) against 0.6-1.5 s with passive waiting and 2.3-2.8 s with one thread
(docs/performance.md, "Threads on a busy machine").

The OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this module sets it
(``PASSIVE``: an idle thread sleeps at once) when ``convlstm_vp`` is imported before torch and the
environment does not set it already. Importing torch first, or setting ``OMP_WAIT_POLICY``
yourself, keeps that choice; :func:`describe` says which one holds (the training log prints it).
"""

from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"
_state = {"how": "unset"}


def configure() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it or torch is loaded already."""
    if VARIABLE in os.environ:
        _state["how"] = "environment"
    elif "torch" in sys.modules:
        _state["how"] = "torch first"
    else:
        os.environ[VARIABLE] = "PASSIVE"
        _state["how"] = "set"


def describe(threads: int) -> str:
    """One line for the log: the torch thread count and how the OpenMP threads wait."""
    how = {
        "set": f"passively ({VARIABLE}=PASSIVE, set by convlstm_vp)",
        "environment": f"as the environment says ({VARIABLE}={os.environ.get(VARIABLE)})",
        "torch first": f"by the OpenMP default (spinning; torch was imported before convlstm_vp; "
        f"set {VARIABLE}=PASSIVE before starting Python if other jobs share the cores)",
        "unset": "by the OpenMP default",
    }[_state["how"]]
    return f"{threads} torch thread{'s' if threads != 1 else ''}; idle OpenMP threads wait {how}"
