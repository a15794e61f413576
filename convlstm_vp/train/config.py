"""Configs are plain data: nested dicts loaded from YAML, checked against a task's defaults.

Every key a config may hold appears in the defaults; an unknown key, a value of the wrong type or
a bad ``--set`` override fails fast with a message that names the key.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..data.safe_io import InputError, read_text


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong kind."""


TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1000,  # optimizer steps
    "batch_size": 16,  # per process
    "optimizer": "adamw",  # adamw | adam | sgd | rmsprop
    "rmsprop_alpha": 0.99,  # RMSprop's decay of the squared-gradient average
    "lr": 1e-3,
    "weight_decay": 0.0,
    "schedule": "onecycle",  # onecycle | cosine | constant
    "warmup_fraction": 0.1,
    "grad_clip": 1.0,  # 0 disables
    "precision": "fp32",  # fp32 | bf16 | fp16 (fp16 on CUDA only) | auto (bf16 where the device computes it natively, else fp32)
    "log_every": 10,
    "eval_every": 200,  # evaluate the validation split (and maybe save best.pt) every this many steps
    # early stopping: end training after this many validation evaluations without a better
    # score (the task's best_metric); 0 trains all train.steps
    "patience": 0,
    # a cheap evaluation every this many steps, for tasks that have one (frame prediction: MSE of
    # a few fixed validation sequences, TensorBoard val_quick/); 0 turns it off
    "quick_eval_every": 0,
    "checkpoint_every": 50,
    "nan_policy": "stop",  # stop | skip
    "num_threads": 0,  # torch intra-op threads; 0 = torch's default
    "deterministic": True,
    "progress": True,
    "device": "auto",  # auto | cpu | cuda
    # the ConvLSTM cells' computation paths (convlstm_vp.nn.Implementation): auto picks per
    # device what the benchmark measured fastest ("plain" on CUDA; "graphed" by name); compiled
    # runs every cell step through torch.compile (the first steps compile; where compiling
    # fails, a warning and eager steps)
    "implementation": "auto",  # auto | plain | fused | compiled | graphed
}

# keys renamed since: an old config that uses one is told the new name
RENAMED_KEYS = {
    "data.eval_sequences": "data.val_sequences",  # validation moved off the test set
    "data.eval_size": "data.test_size",
}

_CHOICES = {
    ("train", "optimizer"): ("adamw", "adam", "sgd", "rmsprop"),
    ("train", "schedule"): ("onecycle", "cosine", "constant"),
    ("train", "precision"): ("fp32", "bf16", "fp16", "auto"),
    ("train", "nan_policy"): ("stop", "skip"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "implementation"): ("auto", "plain", "fused", "compiled", "graphed"),
}
_POSITIVE = {("train", k) for k in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every")} | {
    ("data", "eval_batch_size"),
    ("data", "val_sequences"),
    ("data", "final_eval_sequences"),
}
_NON_NEGATIVE = {
    ("train", k)
    for k in ("lr", "weight_decay", "grad_clip", "num_threads", "warmup_fraction", "quick_eval_every", "patience")
} | {("seed",), ("encoder_loss_weight",), ("l1_weight",), ("motion_loss_weight",)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(default: Any) -> str:
    """What a value of ``default``'s type is called in an error message."""
    if isinstance(default, bool):
        return "true/false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    return "a list" if isinstance(default, (list, tuple)) else f"a {type(default).__name__}"


def _number(text: str, fallback: Any) -> Any:
    """``text`` as a float when it spells one ("1e-4", "5E-3"), else ``fallback``."""
    try:
        return float(text)
    except ValueError:
        return fallback


def _check_value(path: tuple[str, ...], value: Any, default: Any) -> Any:
    key = ".".join(path)
    if default is None:
        return value
    if value is None:  # null (or an empty --set value) where the default is a value: never a silent default
        raise ConfigError(f"config key {key!r}: expected {_kind(default)}, got null (an empty or null value)")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads scientific notation without a dot, such as 1e-4, as a string
            value = _number(value, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        value = list(value)
    if path[-2:] in _CHOICES or path in _CHOICES:
        choices = _CHOICES.get(path) or _CHOICES[path[-2:]]
        if value not in choices:
            raise ConfigError(f"config key {key!r}: expected one of {choices}, got {value!r}")
    if _is_int(default) and default > 0 and value < 0:  # counts and sizes
        raise ConfigError(f"config key {key!r}: expected a size >= 0, got {value!r}")
    if isinstance(default, list) and default and all(_is_int(v) and v > 0 for v in default):
        if any(not _is_int(v) or v < 0 for v in value):
            raise ConfigError(f"config key {key!r}: expected a list of sizes (integers >= 0), got {value!r}")
    if path == ("name",) and (not value.strip() or "/" in value or value in (".", "..")):
        raise ConfigError(f"config key 'name': expected a run name (a folder name under runs/), got {value!r}")
    if path in _POSITIVE and value <= 0:
        raise ConfigError(f"config key {key!r}: expected a positive value, got {value!r}")
    if path in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"config key {key!r}: expected a value >= 0, got {value!r}")
    return value


def merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``defaults``; unknown keys are errors."""
    out = copy.deepcopy(dict(defaults))
    for key, value in overrides.items():
        here = path + (str(key),)
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            renamed = RENAMED_KEYS.get(".".join(here))
            hint = f"; it is now {renamed!r}" if renamed and renamed.rsplit(".", 1)[-1] in defaults else ""
            raise ConfigError(f"unknown config key {'.'.join(here)!r}{hint} (known keys here: {known})")
        if isinstance(defaults[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {'.'.join(here)!r}: expected a mapping, got {value!r}")
            out[key] = merge(defaults[key], value, here)
        else:
            out[key] = _check_value(here, value, defaults[key])
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.hidden_channels=[32,32]"]`` → nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {yaml_error_line(exc)}") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None, defaults: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load a YAML config, merge it over ``defaults``, then apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(read_text(p, "YAML config"))
        except InputError as exc:
            raise ConfigError(str(exc)) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {yaml_error_line(exc)}") from None
        if loaded is None:
            raise ConfigError(f"config file {p} is empty: expected a YAML mapping of config keys (see configs/)")
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        data = dict(loaded or {})
        data.setdefault("name", p.stem)
        try:
            cfg = merge(defaults, data)
        except ConfigError as exc:  # name the file the key is in
            raise ConfigError(f"config file {p}: {exc}") from None
    else:
        cfg = merge(defaults, data)
    return merge(defaults, _deep_update(cfg, parse_overrides(overrides)))


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error (several lines from PyYAML) as one line: the problem and where it is."""
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or ["invalid YAML"])[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def _deep_update(base: dict[str, Any], upd: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def keys_named_in(message: str, cfg: Mapping[str, Any], sections: Sequence[str] | None = None) -> list[str]:
    """Dotted config keys (``"model.kernel_size"``) whose last part appears as a word in ``message``.

    Errors from model constructors name their argument (``"hidden_channels: expected ..."``),
    and configs use the same names, so this points such an error at the config key. Only the
    given ``sections`` are searched (all by default).
    """
    import re

    found = []
    for section, values in cfg.items():
        if isinstance(values, Mapping) and (sections is None or section in sections):
            for key in values:
                if re.search(rf"(?<![\w.]){re.escape(str(key))}(?!\w)", message):
                    found.append(f"{section}.{key}")
    return found


def config_error(
    exc: BaseException, cfg: Mapping[str, Any], context: str, sections: Sequence[str] | None = None
) -> ConfigError:
    """A :class:`ConfigError` for ``exc`` raised while ``context`` (e.g. "building the model"),
    naming the keys of ``sections`` that the message mentions."""
    text = str(exc).strip() or type(exc).__name__
    if "config key" in text:  # the message already names its key
        return ConfigError(text)
    keys = keys_named_in(text, cfg, sections)
    if len(keys) == 1:
        where = f"config key {keys[0]!r}"
    elif keys:
        where = "config keys " + ", ".join(repr(k) for k in keys)
    else:
        where = "config"
    return ConfigError(f"{where}: {context} failed: {text}")


#: config keys that ``--resume`` may change: they decide what is logged, saved, evaluated and
#: when training ends, never the weights a step computes (train.steps extends a run whose schedule
#: allows it; the loop checks onecycle). Any other difference is an error listing the keys.
RESUME_MAY_CHANGE = (
    "name",
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_every",
    "train.quick_eval_every",
    "train.patience",
    "train.progress",
    "train.num_threads",
    "log",
    "data.cache_dir",
)


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = list(value) if isinstance(value, tuple) else value
    return out


def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: saved -> current"`` for every key that differs between the config a checkpoint was
    trained with (``saved``) and the one a ``--resume`` runs with, except :data:`RESUME_MAY_CHANGE`
    (a key or a whole section). Keys only one of them has (an older version's config) are skipped."""
    old, new = _flatten(saved), _flatten(current)
    changed = []
    for key in new:
        if key in old and old[key] != new[key]:
            if not any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE):
                changed.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return changed


def check_resume_config(saved: Any, current: Mapping[str, Any], where: str) -> None:
    """ConfigError listing the keys in which ``current`` differs from the config ``saved`` in the
    checkpoint ``where`` (:func:`resume_changes`): a resumed run trains as its config says."""
    if not isinstance(saved, Mapping):
        return  # load_checkpoint refuses such a checkpoint
    changed = resume_changes(saved, current)
    if changed:
        raise ConfigError(
            f"--resume: this config differs from the one {where} was trained with in {', '.join(changed)}; "
            f"resume with the run's own config (only {', '.join(RESUME_MAY_CHANGE)} may change), or start a new run"
        )
