"""``python -m convlstm_vp ...``: the ``convlstm-vp`` console command (see :mod:`convlstm_vp.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
