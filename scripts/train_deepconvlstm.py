"""Train DeepConvLSTM (Ordóñez & Roggen 2016) on sensor windows or series: BasicMotions, OPPORTUNITY,
aeon:<Name>, a <Name>_TRAIN.ts file, an .npz or a folder of .csv recordings (``data.dataset``).

    python scripts/train_deepconvlstm.py --config configs/deepconvlstm-basicmotions.yaml [--set train.steps=100] [--resume]

Writes ``runs/<name>/``: TensorBoard events (loss, accuracy, macro and weighted F1, confusion
matrix image; ``tensorboard --logdir runs``), ``checkpoints/last.pt`` and ``best.pt`` (best
validation weighted F1), ``confusion_matrix.png`` and ``metrics.json`` with best.pt's test
``accuracy``, ``f1_macro`` and ``f1_weighted``.
"""

import sys

from convlstm_vp.train.cli import train_sensors

if __name__ == "__main__":
    train_sensors(sys.argv[1:], __doc__)
