"""Evaluate a Moving MNIST checkpoint on the fixed test set: ``convlstm-vp evaluate``.

    python scripts/evaluate.py --checkpoint runs/cpu-quick/checkpoints/best.pt [--json out.json]

The code and its documentation are in convlstm_vp/train/evaluate.py (``--help``).
"""

from convlstm_vp.train.evaluate import main

if __name__ == "__main__":
    main()
