"""Complete MNIST digits: from the first 8 of their 16 patches (7x7), predict the last 8.

    python scripts/complete_patches.py --config configs/patch-completion.yaml [--set train.steps=500] [--resume]

Trains the ConvLSTM encoder-forecaster of frame prediction on patch sequences and writes the
reassembled digits (input half, input + predicted half, truth) to ``runs/<name>/completions.png``
and to TensorBoard (``tensorboard --logdir runs``).
"""

import sys

from convlstm_vp.train.cli import run_training
from convlstm_vp.train.tasks.patch_completion import DEFAULTS, PatchCompletionTask

if __name__ == "__main__":
    tasks: list[PatchCompletionTask] = []

    def make_task(cfg: dict) -> PatchCompletionTask:
        tasks.append(PatchCompletionTask(cfg))
        return tasks[-1]

    run_training(sys.argv[1:], __doc__, DEFAULTS, make_task)
    if tasks and tasks[-1].image_path is not None:
        print(f"reassembled digits: {tasks[-1].image_path}")
