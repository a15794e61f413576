"""The benchmark (``convlstm-vp benchmark``, ``scripts/benchmark.py``): reference models
(:mod:`.reference`), configurations and cases (:mod:`.cases`), timing and report (:mod:`.run`).

Nothing in ``convlstm_vp.nn`` or ``convlstm_vp.models`` imports this package."""
