"""Complete MNIST digits: from the first 8 of their 16 patches (7x7), predict the last 8.

    python scripts/complete_patches.py --config configs/patch-completion.yaml [--set train.steps=500] [--resume]

Trains the ConvLSTM encoder-forecaster of frame prediction on patch sequences and writes the
reassembled digits (input half, input + predicted half, truth) to ``runs/<name>/completions.png``
and to TensorBoard (``tensorboard --logdir runs``).
"""

import sys

from convlstm_vp.train.cli import train_patch_completion

if __name__ == "__main__":
    train_patch_completion(sys.argv[1:], __doc__)
