"""Classify MNIST digits read as sequences of 16 patches of 7x7 pixels with a ConvLSTM2D stack.

    python scripts/train_patch_classifier.py --config configs/patch-classifier.yaml [--set train.steps=500] [--resume]

Prints the test accuracy and per-class recall and writes them to ``runs/<name>/metrics.json``.
TensorBoard: ``tensorboard --logdir runs`` (loss, accuracy, confusion matrix, misclassified digits).
"""

import sys

from convlstm_vp.train.cli import train_patches

if __name__ == "__main__":
    train_patches(sys.argv[1:], __doc__)
