"""How torch's OpenMP threads wait: passive unless the environment says otherwise (convlstm_vp.openmp)."""

from __future__ import annotations

import os
import sys

from convlstm_vp import openmp


def test_passive_waiting_is_set_before_torch_loads_unless_the_environment_chose(monkeypatch):
    monkeypatch.setitem(openmp._state, "how", openmp._state["how"])  # restored afterwards
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as at `import convlstm_vp` in a fresh process
    openmp.configure()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "passively (OMP_WAIT_POLICY=PASSIVE, set by convlstm_vp)" in openmp.describe(2)
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
