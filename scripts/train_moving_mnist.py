"""Train the ConvLSTM encoder-forecaster for frame prediction: on Moving MNIST, or on a folder
of your own videos (``data.dataset: video_folder``, ``data.root``: the folder).

    python scripts/train_moving_mnist.py --config configs/cpu-quick.yaml [--set train.steps=100] [--resume]
    python scripts/train_moving_mnist.py --config configs/video-folder.yaml --set data.root=path/to/videos

TensorBoard: ``tensorboard --logdir runs`` (loss curves, metrics, predicted frames next to the
ground truth as images and as animated GIFs).
"""

import sys

from convlstm_vp.train.cli import train_frames

if __name__ == "__main__":
    train_frames(sys.argv[1:], __doc__)
