"""The frame-prediction job's config defaults (``convlstm-vp train frames``)."""

from __future__ import annotations

from typing import Any

from ...config import TRAIN_DEFAULTS

DEFAULTS: dict[str, Any] = {
    "name": "moving_mnist",
    "seed": 0,
    "loss": "bce",  # bce | mse | l1 | l1+mse | bce+l1
    "l1_weight": 1.0,  # weight of the L1 term of the bce+l1 loss
    # weight of the auxiliary loss on the encoder's one-step-ahead predictions of the input frames
    "encoder_loss_weight": 0.0,
    # weight of an L1 loss between the filter kernels' mean source offsets and the generated
    # digits' true motion (dynamic-filter head; see motion_targets); 0 turns it off
    "motion_loss_weight": 0.0,
    "model": {
        "hidden_channels": [64, 64, 64],
        "kernel_size": 3,
        "patch_size": 4,
        "input_frames": 10,
        "output_frames": 10,
        "peephole": False,
        "head": "conv",  # conv | dynamic_filter
        "filter_size": 9,  # kernel side of the dynamic-filter head
        "output_activation": None,  # null: sigmoid for the conv head, identity for dynamic_filter
        # [start, end, steps] or null: in training step k the forecaster is fed the true previous
        # frame with probability start + (end - start) * min(k / steps, 1) (scheduled_sampling())
        "scheduled_sampling": None,
        # softmax temperature of the filter kernels when predicting: validation during training
        # (and so the best checkpoint), the final test, evaluate.py and predict.py (their --filter-temperature
        # overrides it); training itself always runs at 1. Below 1 sharpens the kernels, so less
        # blur piles up over the horizon: SSIM up, MSE a little worse (README "Results")
        "eval_filter_temperature": 1.0,
    },
    "data": {
        "dataset": "moving_mnist",  # moving_mnist | video_folder (convlstm_vp.data.VideoFolder)
        # moving_mnist: the data root (datasets/); video_folder: the folder of your videos
        "root": "datasets",
        # video_folder: frames are resized keeping the aspect ratio and centre-cropped to [H, W],
        # 1 (grey) or 3 (RGB) channels, every frame_step-th source frame (Moving MNIST: 64x64 grey)
        "size": [64, 64],
        "channels": 1,
        "frame_step": 1,
        # video_folder: where decoded frames are cached (null: <data.root>/.cache)
        "cache_dir": None,
        "source": "auto",  # moving_mnist: auto | mnist | embedded
        "num_digits": 2,
        # validation (every train.eval_every steps; picks best.pt): this many fixed sequences of
        # train digits (MovingMNIST split "val"; the test digits are left to the final test), or
        # at most this many clips of the video folder's validation split
        "val_sequences": 1000,
        # the frequent cheap validation (every train.quick_eval_every steps, TensorBoard
        # val_quick/mse): MSE of the first this-many validation sequences
        "quick_eval_sequences": 16,
        # the end of training tests best.pt on the first this-many test sequences (video folder:
        # test clips), the set evaluate.py scores by default, so metrics.json and evaluate.py agree
        "final_eval_sequences": 1000,
        "eval_batch_size": 50,
        "test_seed": 0,  # moving_mnist: seed of the generated test set
    },
    "log": {"examples": 4, "fps": 4.0},
    "train": dict(TRAIN_DEFAULTS, lr=2e-3, precision="auto", eval_every=200, quick_eval_every=50),
}
