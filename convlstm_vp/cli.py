"""The ``convlstm-vp`` console command (``python -m convlstm_vp`` and ``python -m convlstm_vp.cli`` too).

    convlstm-vp train frames|patches|patch-completion|sensors --config CONFIG [--set k=v ...] [--resume] [--run-dir DIR]
    convlstm-vp evaluate --checkpoint runs/cpu-quick/checkpoints/best.pt [--json out.json] ...
    convlstm-vp predict --checkpoint runs/cpu-quick/checkpoints/best.pt --input clip.mp4 --output out.gif
    convlstm-vp export --checkpoint runs/cpu-quick/checkpoints/best.pt --output m.onnx [--form step]
    convlstm-vp classify --checkpoint runs/<name>/checkpoints/best.pt --data aeon:JapaneseVowels --output out/
    convlstm-vp benchmark [--quick] [--json out.json] ...

Each subcommand takes exactly the arguments of its script in ``scripts/`` (train_moving_mnist.py,
train_patch_classifier.py, complete_patches.py, train_deepconvlstm.py, evaluate.py, predict.py,
classify.py, benchmark.py, export.py), runs the same code and exits with the same status. A
subcommand's module is only imported when it runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

PROG = "convlstm-vp"

# name: (module, function, one-line summary); the function takes (argv, prog=...)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": (
        "convlstm_vp.train.cli",
        "train_main",
        "train a model: frames (Moving MNIST), patches (7x7 patch classifier), patch-completion, sensors (DeepConvLSTM)",
    ),
    "evaluate": (
        "convlstm_vp.train.evaluate",
        "main",
        "score a Moving MNIST checkpoint on the fixed test set (MSE, MAE, SSIM, PSNR)",
    ),
    "predict": (
        "convlstm_vp.train.predict",
        "main",
        "predict the next frames of a video (.npy, .gif, .mp4, ...) with a checkpoint",
    ),
    "export": (
        "convlstm_vp.export",
        "main",
        "export a trained model to ONNX (clip forecast, one streaming step, or logits)",
    ),
    "classify": (
        "convlstm_vp.train.classify",
        "main",
        "apply a DeepConvLSTM or patch-classifier checkpoint to new data; writes predictions.csv and metrics",
    ),
    "benchmark": (
        "convlstm_vp.bench.run",
        "main",
        "time the ConvLSTM layer and models against a reference, torch.nn.LSTM and Keras",
    ),
}


def usage() -> str:
    lines = [
        f"usage: {PROG} {{{','.join(COMMANDS)}}} ...",
        "",
        "ConvLSTM training, evaluation, prediction and benchmark.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", f"'{PROG} COMMAND --help' lists a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``argv`` (default ``sys.argv[1:]``); returns the exit status (a subcommand's errors
    raise ``SystemExit`` with the status its script exits with)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"{usage()}\n\n{PROG}: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    module, function, _ = COMMANDS[name]
    result = getattr(importlib.import_module(module), function)(rest, prog=f"{PROG} {name}")
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    raise SystemExit(main())
