"""Evaluate a frame-prediction checkpoint on the test split of the data it was trained on.

    python scripts/evaluate.py --checkpoint runs/cpu-quick/checkpoints/best.pt [--digits 3] [--json out.json] [--recognition] [--motion]
    convlstm-vp evaluate --checkpoint runs/cpu-quick/checkpoints/best.pt [--digits 3] [--json out.json] [--recognition] [--motion]
    convlstm-vp evaluate --checkpoint runs/video-folder/checkpoints/best.pt [--data other/videos] [--json out.json]

By default it scores the first ``data.final_eval_sequences`` (1000) test sequences of the run's
config at its ``data.eval_batch_size`` and precision: the set, batch size and precision with which
the end of training scores ``best.pt`` for ``metrics.json``, so the two report the same numbers.
A video-folder checkpoint is scored on the test clips of its ``data.root`` (or of ``--data DIR``),
cut and resized as in training.

Metrics (README, "Metrics"): MSE and MAE per frame summed over pixels (and channels) and averaged
over frames and sequences, SSIM (11x11 Gaussian window, mean over channels) and PSNR, plus
per-horizon curves. The all-zeros, copy-last-frame and mean-of-inputs baselines on the same
sequences are printed for reference. With --recognition, a
digit classifier trained on the training digits reads each digit's 28x28 window in the predicted
and in the true frames (README, "Metrics"). With --motion (dynamic-filter head, generated test set), the
filter kernels' mean source offsets are compared with the digits' true motion.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from convlstm_vp.data import MovingMNIST, load_digits
from convlstm_vp.train.checkpoint import CheckpointError, atomic_write_bytes, json_bytes
from convlstm_vp.train.cli import add_render_arguments, check_output_file, check_render_arguments, fail, positive_int
from convlstm_vp.train.metrics import FrameMetrics
from convlstm_vp.train.precision import resolve_device
from convlstm_vp.train.recognition import digit_accuracy, recognition_accuracy, train_digit_recognizer
from convlstm_vp.train.tasks.frames.inference import load_trained, predict
from convlstm_vp.train.tasks.frames.losses import motion_error
from convlstm_vp.train.tasks.frames.sources import test_sequences

BASELINES = ("zeros", "copy_last", "mean_inputs")


def _parser(prog: str | None) -> argparse.ArgumentParser:
    """The command line of ``evaluate``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--digits", type=positive_int, default=None, help="digits per sequence (default: as trained)")
    p.add_argument(
        "--sequences",
        type=positive_int,
        default=None,
        help="number of test sequences, the first of the set (default: the config's data.final_eval_sequences, 1000 "
        "unless set: the set the end of training scores, so the run's metrics.json and this agree)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="test-set seed (generated test set only; default: the config's data.test_seed, 0 unless set)",
    )
    p.add_argument("--root", default=None, help="Moving MNIST data root (default: as trained)")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="video-folder checkpoints: score the test split of this folder of videos (default: the data.root it was trained on)",
    )
    p.add_argument(
        "--standard-file",
        choices=["auto", "yes", "no"],
        default="auto",
        help="use datasets/moving_mnist/mnist_test_seq.npy (auto: when present and 2 digits)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default=None,
        help="default: as trained (auto: bf16 where the device computes it natively)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="default: the config's data.eval_batch_size (as in training)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (default auto: CUDA when available)",
    )
    p.add_argument("--json", help="write {mse, mae, ssim, psnr, per_frame, baselines[, recognition][, motion]} here")
    p.add_argument(
        "--recognition",
        action="store_true",
        help="also report how often a digit classifier recognises each digit in the predicted frames",
    )
    add_render_arguments(p)
    p.add_argument(
        "--motion",
        action="store_true",
        help="also report how far the filter kernels' mean source offsets are from the digits' true motion (dynamic filter)",
    )
    p.add_argument(
        "--recognizer-epochs", type=positive_int, default=6, help="training epochs of that classifier (default 6)"
    )
    return p


def _check_source_flags(args: argparse.Namespace, d: dict, videos: bool) -> None:
    """Flags of one data source given with a checkpoint of the other: an error naming them."""
    mnist_only = [
        flag
        for flag, given in (
            ("--digits", args.digits),
            ("--seed", args.seed),
            ("--root", args.root),
            ("--recognition", args.recognition),
            ("--motion", args.motion),
            ("--standard-file", args.standard_file != "auto"),
        )
        if given
    ]
    if videos and mnist_only:
        fail(
            f"{', '.join(mnist_only)} apply to Moving MNIST checkpoints; {args.checkpoint} was trained "
            f"on the video folder {d['root']} (use --data DIR for another folder)"
        )
    if not videos and args.data:
        fail(f"--data applies to video-folder checkpoints; {args.checkpoint} was trained on Moving MNIST (use --root)")


def _score(pred, x, y, checkpoint: str) -> dict:
    """Metrics of the model's predictions ``pred`` and of the baselines against the truth ``y``
    (inputs ``x``), by name; predictions that hold NaN are an error."""
    results = {}
    guesses = {
        "model": pred,
        "zeros": torch.zeros_like(y),
        "copy_last": x[:, -1:].expand_as(y),
        "mean_inputs": x.mean(1, keepdim=True).expand_as(y),
    }
    for name, guess in guesses.items():
        fm = FrameMetrics()
        fm.update(guess, y)
        results[name] = fm.compute()
    if any(math.isnan(results["model"][m]) for m in FrameMetrics.names):
        fail(
            f"the predictions of {checkpoint} hold NaN values: "
            + ", ".join(f"{m}={results['model'][m]}" for m in FrameMetrics.names)
        )
    return results


def _print_scores(heading: str, temperature: float, render: str, results: dict, pf: dict, t_out: int) -> None:
    """The scores of the model and the baselines, then the model's per-frame curve."""
    print(
        heading
        + (f", filter temperature {temperature:g}" if temperature != 1.0 else "")
        + (f", rendered by {render}" if render != "filter" else "")
    )
    print(f"{'':>11} {'MSE':>9} {'MAE':>9} {'SSIM':>7} {'PSNR':>7}")
    for name in ("model",) + BASELINES:
        r = results[name]
        print(f"{name:>11} {r['mse']:9.2f} {r['mae']:9.2f} {r['ssim']:7.4f} {r['psnr']:7.2f}")
    print("per frame (model):")
    print(f"{'t':>4} {'MSE':>9} {'MAE':>9} {'SSIM':>7} {'PSNR':>7}")
    for t in range(t_out):
        print(f"{t + 1:>4} {pf['mse'][t]:9.2f} {pf['mae'][t]:9.2f} {pf['ssim'][t]:7.4f} {pf['psnr'][t]:7.2f}")


def _recognition(ds, pred, y, root: str, source: str, epochs: int, t_in: int, t_out: int, digits: int) -> dict:
    """How often a digit classifier trained on the training digits reads each digit in the predicted
    and in the true frames of the generated test set ``ds`` (printed, and returned)."""
    pool = load_digits(root, "train", source)
    recognizer = train_digit_recognizer(pool.images, pool.labels, epochs=epochs)
    tracks = [ds.trajectories(i) for i in range(len(ds))]
    corners = torch.stack([torch.from_numpy(c) for c, _ in tracks])[:, :, t_in : t_in + t_out]
    labels = torch.stack([torch.from_numpy(l) for _, l in tracks])
    rec = {
        name: recognition_accuracy(recognizer, frames, corners, labels)
        for name, frames in (("model", pred), ("truth", y))
    }
    held_out = ds.digits  # the held-out test digits the sequences are drawn from
    rec["isolated_test_digits"] = digit_accuracy(recognizer, held_out.images, held_out.labels)
    print(
        f"digit recognition (classifier trained on {len(pool)} {pool.source} training digits; "
        f"{rec['isolated_test_digits']:.3f} right on the {len(held_out)} isolated test digits):"
    )
    print(f"{'t':>4} {'model':>7} {'truth':>7}")
    for t in range(t_out):
        print(f"{t + 1:>4} {rec['model']['per_frame'][t]:7.3f} {rec['truth']['per_frame'][t]:7.3f}")
    print(
        f"all {digits} digits right at the last frame: model {rec['model']['all_digits_last']:.3f}, truth {rec['truth']['all_digits_last']:.3f}"
    )
    return rec


def _motion(generated, patch_size: int, offsets, t_in: int, t_out: int) -> dict:
    """How far the filter kernels' mean source offsets are from the digits' true motion (printed, and returned)."""
    truth = [generated.motion(i, patch_size) for i in range(len(generated))]
    target = torch.stack([torch.from_numpy(o) for o, _ in truth])[:, t_in - 1 : t_in - 1 + t_out]
    weights = torch.stack([torch.from_numpy(w) for _, w in truth])[:, t_in - 1 : t_in - 1 + t_out]
    mo = motion_error(offsets, target, weights)
    print(
        f"motion: mean |kernel offset - true motion| {mo['mae_px']:.3f} px per component "
        f"(offsets of zero: {mo['no_motion_mae_px']:.3f}), on cells one digit alone covers:"
    )
    print(f"{'t':>4} {'model':>7} {'zero':>7}")
    for t in range(t_out):
        print(f"{t + 1:>4} {mo['per_frame'][t]:7.3f} {mo['no_motion_per_frame'][t]:7.3f}")
    return mo


def main(argv=None, prog: str | None = None) -> dict:
    p = _parser(prog)
    args = p.parse_args(argv)
    check_render_arguments(p, args)
    if args.json:  # before the evaluation: a --json that cannot be written is an error now, not after minutes
        check_output_file(args.json, "--json")
    try:
        device = resolve_device(args.device, what="--device")
        model, cfg = load_trained(args.checkpoint)
        temperature = (
            cfg["model"]["eval_filter_temperature"] if args.filter_temperature is None else args.filter_temperature
        )
        model.check_rendering(temperature, args.render)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    model = model.to(device)
    d = cfg["data"]
    videos = d["dataset"] == "video_folder"
    _check_source_flags(args, d, videos)
    args.sequences = d["final_eval_sequences"] if args.sequences is None else args.sequences
    args.seed = d["test_seed"] if args.seed is None else args.seed
    args.batch_size = args.batch_size or d["eval_batch_size"]
    digits = args.digits or d["num_digits"]
    t_in, t_out = cfg["model"]["input_frames"], cfg["model"]["output_frames"]
    standard = {"auto": None if digits == 2 else False, "yes": True, "no": False}[args.standard_file]
    root = args.root or d["root"]
    if args.motion and not model.head.has_kernels:
        fail(
            f"--motion needs a head with filter kernels (model.head dynamic_filter); this checkpoint's head is "
            f"{model.head_type}"
        )
    try:
        seqs, evaluated_on = (
            test_sequences(cfg, args.data, args.sequences)
            if videos
            else test_sequences(cfg, root, args.sequences, num_digits=digits, seed=args.seed, standard_file=standard)
        )
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or args.data or root}: {exc.strerror or exc}")
    x, y = seqs[:, :t_in], seqs[:, t_in:]
    standard_path = None if videos or evaluated_on["test_set"].startswith("generated") else evaluated_on["test_set"]
    for flag, wanted in (("--motion", args.motion), ("--recognition", args.recognition)):
        if wanted and standard_path is not None:
            fail(f"{flag} needs digit trajectories; the standard file {standard_path} has none: add --standard-file no")
    # the generated test set the sequences came from, for its digit trajectories
    generated = (
        MovingMNIST(
            root,
            "test",
            num_digits=digits,
            num_frames=t_in + t_out,
            length=args.sequences,
            seed=args.seed,
            source=d["source"],
            standard_file=False,
        )
        if args.motion or args.recognition
        else None
    )
    pred = predict(
        model,
        x,
        args.batch_size,
        args.precision or cfg["train"]["precision"],
        return_offsets=args.motion,
        filter_temperature=temperature,
        render=args.render,
    )
    if args.motion:
        pred, offsets = pred
    results = _score(pred, x, y, args.checkpoint)
    out = dict(results["model"])
    out["baselines"] = {k: {m: results[k][m] for m in FrameMetrics.names} for k in BASELINES}
    out["baselines_per_frame"] = {k: results[k]["per_frame"] for k in BASELINES}
    out["sequences"] = int(seqs.shape[0])
    if not videos:
        out["digits"] = digits
    out["channels"] = int(seqs.shape[2])
    out["filter_temperature"] = temperature
    out["head"] = model.head_type
    out["render"] = args.render
    out["test_set"] = evaluated_on["test_set"]
    out["evaluated_on"] = {**evaluated_on, "checkpoint": args.checkpoint}

    heading = (
        evaluated_on["what"]
        if videos
        else f"test set: {out['test_set']}, {out['sequences']} sequences, {digits} digits"
    )
    _print_scores(heading, temperature, args.render, results, out["per_frame"], t_out)
    if args.recognition:
        out["recognition"] = _recognition(
            generated, pred, y, root, d["source"], args.recognizer_epochs, t_in, t_out, digits
        )
    if args.motion:
        out["motion"] = _motion(generated, model.patch_size, offsets, t_in, t_out)
    if args.json:
        atomic_write_bytes(Path(args.json), json_bytes(out))
    return out


if __name__ == "__main__":
    main()
