"""How torch's OpenMP threads wait: passive when other jobs run at start, unless the environment says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from convlstm_vp import openmp


def test_passive_waiting_is_set_before_torch_loads_unless_the_environment_chose(monkeypatch):
    monkeypatch.setitem(openmp._state, "how", openmp._state["how"])  # restored afterwards
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as at `import convlstm_vp` in a fresh process
    openmp.configure(others=0.0)  # an idle machine keeps OpenMP's spinning default
    assert "OMP_WAIT_POLICY" not in os.environ
    assert "by the OpenMP default (spinning: 0.0 other runnable tasks at start" in openmp.describe(2)
    openmp.configure(others=1.4)  # another job runs: passive
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "passively (OMP_WAIT_POLICY=PASSIVE, set by convlstm_vp: 1.4 other runnable" in openmp.describe(2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stays
    openmp.configure()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "OMP_WAIT_POLICY=ACTIVE" in openmp.describe(1)
    assert openmp.describe(1).startswith("1 torch thread;")


def test_torch_loaded_first_keeps_its_default_and_says_so(monkeypatch):
    monkeypatch.setitem(openmp._state, "how", openmp._state["how"])  # restored afterwards
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    import torch  # noqa: F401

    openmp.configure()
    assert "OMP_WAIT_POLICY" not in os.environ
    assert "torch was imported before convlstm_vp" in openmp.describe(2)


def test_other_runnable_sees_a_busy_process():
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert openmp.other_runnable(samples=20, gap_s=0.005) >= 0.5
    finally:
        burner.kill()
        burner.wait()
