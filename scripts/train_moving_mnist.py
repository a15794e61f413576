"""Train the ConvLSTM encoder-forecaster on Moving MNIST.

    python scripts/train_moving_mnist.py --config configs/cpu-quick.yaml [--set train.steps=100] [--resume]

TensorBoard: ``tensorboard --logdir runs`` (loss curves, metrics, predicted frames next to the
ground truth as images and as animated GIFs).
"""

import sys

from convlstm_vp.train.cli import run_training
from convlstm_vp.train.tasks.moving_mnist import DEFAULTS, MovingMNISTTask

if __name__ == "__main__":
    run_training(sys.argv[1:], __doc__, DEFAULTS, MovingMNISTTask)
