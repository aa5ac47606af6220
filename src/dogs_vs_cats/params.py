"""The one place where `params.yaml` is read and validated.

Every stage calls `load()` and gets typed, range-checked values back. A bad value
stops the run with one line naming the key and what it accepts, before any work
starts, so a typo never costs a half-finished training run.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .common import UserError

MODELS = ("squeezenet1_0", "squeezenet1_1")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")


class ParamError(UserError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Data:
    competition: str = "dogs-vs-cats-redux-kernels-edition"
    source: str = "kaggle"
    retries: int = 5
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Split:
    seed: int = 42
    n_train: int = 2000
    n_val: int = 800
    n_holdout: int = 1000


@dataclass(frozen=True)
class Prepare:
    image_size: int = 128
    workers: int = 0


@dataclass(frozen=True)
class Augment:
    flip: bool = True
    crop_scale: float = 0.35
    rotation: float = 0.05
    contrast: float = 0.2
    brightness: float = 0.1
    mixup: float = 0.0


@dataclass(frozen=True)
class Train:
    model: str = "squeezenet1_1"
    batch_norm: bool = True
    batch_norm_expand: bool = True
    bypass: bool = True
    classifier_relu: bool = False
    dropout: float = 0.5
    optimizer: str = "adamw"
    learning_rate: float = 0.003
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: int = 3
    epochs: int = 120
    batch_size: int = 32
    label_smoothing: float = 0.1
    precision: str = "auto"
    seed: int = 42
    strategy: str = "default"
    shuffle_buffer: int = 4096
    tta: bool = True
    tta_crop: float = 0.8
    low_res_size: int = 96
    low_res_epochs: int = 90
    validation_freq: int = 5
    ema: float = 0.0
    augment: Augment = field(default_factory=Augment)


@dataclass(frozen=True)
class Unlabelled:
    enabled: bool = False
    threshold: float = 0.9
    epochs: int = 30
    low_res_epochs: int = 22


@dataclass(frozen=True)
class Submission:
    clip: float = 0.01


@dataclass(frozen=True)
class Export:
    calibration_images: int = 200
    per_channel: bool = True
    latency_runs: int = 50


@dataclass(frozen=True)
class Params:
    data: Data = field(default_factory=Data)
    split: Split = field(default_factory=Split)
    prepare: Prepare = field(default_factory=Prepare)
    train: Train = field(default_factory=Train)
    unlabelled: Unlabelled = field(default_factory=Unlabelled)
    submission: Submission = field(default_factory=Submission)
    export: Export = field(default_factory=Export)


# key -> (check, description of the accepted values)
def _between(lo, hi, lo_open=False, hi_open=False):
    def check(v):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return check, f"a number in {left}{lo}, {hi}{right}"


def _choice(options):
    return (lambda v: v in options), "one of " + ", ".join(options)


_RULES: dict[str, tuple] = {
    "data.competition": ((lambda v: bool(v.strip()) and "/" not in v), "a Kaggle competition slug"),
    "data.source": ((lambda v: bool(v.strip())), "'kaggle' or a path to the competition zip or folder"),
    "data.retries": _between(0, 100),
    "data.timeout_s": _between(0, 3600, lo_open=True),
    "split.seed": _between(0, 2**31 - 1),
    "split.n_train": _between(2, 10_000_000),
    "split.n_val": _between(2, 10_000_000),
    "split.n_holdout": _between(2, 10_000_000),
    "prepare.image_size": _between(32, 1024),
    "prepare.workers": _between(0, 256),
    "train.model": _choice(MODELS),
    "train.dropout": _between(0, 1, hi_open=True),
    "train.optimizer": _choice(OPTIMIZERS),
    "train.learning_rate": _between(0, 10, lo_open=True),
    "train.weight_decay": _between(0, 1),
    "train.momentum": _between(0, 1, hi_open=True),
    "train.schedule": _choice(SCHEDULES),
    "train.warmup_epochs": _between(0, 10_000),
    "train.epochs": _between(1, 10_000),
    "train.batch_size": _between(1, 4096),
    "train.label_smoothing": _between(0, 0.5, hi_open=True),
    "train.precision": _choice(PRECISIONS),
    "train.seed": _between(0, 2**31 - 1),
    "train.strategy": _choice(STRATEGIES),
    "train.shuffle_buffer": _between(1, 10_000_000),
    "train.low_res_size": ((lambda v: v == 0 or 32 <= v <= 1024), "0 (off) or a size in [32, 1024]"),
    "train.tta_crop": ((lambda v: v == 0 or 0.3 <= v < 1), "0 (off) or a fraction of the side in [0.3, 1)"),
    "train.low_res_epochs": _between(0, 10_000),
    "train.validation_freq": _between(1, 10_000),
    "train.ema": ((lambda v: v == 0 or 0.9 <= v < 1), "0 (off) or a decay per step in [0.9, 1)"),
    "train.augment.crop_scale": _between(0.05, 1),
    "train.augment.rotation": _between(0, 0.5),
    "train.augment.contrast": _between(0, 1, hi_open=True),
    "train.augment.brightness": _between(0, 1, hi_open=True),
    "train.augment.mixup": _between(0, 10),
    "unlabelled.threshold": _between(0.5, 1, hi_open=True),
    "unlabelled.epochs": _between(1, 10_000),
    "unlabelled.low_res_epochs": _between(0, 10_000),
    "submission.clip": _between(0, 0.5, hi_open=True),
    "export.calibration_images": _between(1, 100_000),
    "export.latency_runs": _between(1, 100_000),
}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Accept exactly the YAML type of the default (ints where ints are due, etc.)."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(f"params.yaml: {key} = {value!r} is invalid: expected true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ParamError(f"params.yaml: {key} = {value!r} is invalid: expected a whole number")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ParamError(f"params.yaml: {key} = {value!r} is invalid: expected a finite number")
    if kind is str:
        if isinstance(value, str):
            return value
        # YAML reads a bare path such as 123 or a model name typo as another type; say so plainly.
        raise ParamError(f"params.yaml: {key} = {value!r} is invalid: expected text")
    raise AssertionError(f"no coercion for {kind}")


def _build(cls, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamError(f"params.yaml: {prefix or 'the top level'} must be a mapping of keys to values")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        name = unknown[0]
        # A key YAML read as a number, or with spaces or control characters, is shown quoted.
        shown = name if isinstance(name, str) and name.isidentifier() else repr(name)
        where = f"{prefix}.{shown}" if prefix else shown
        raise ParamError(f"params.yaml: unknown key {where}; accepted keys here: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        key = f"{prefix}.{name}" if prefix else name
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            values[name] = _build(type(default), raw.get(name), key)
            continue
        value = _coerce(key, raw[name], default) if name in raw else default
        rule = _RULES.get(key)
        if rule is not None:
            check, accepted = rule
            if not check(value):
                shown = raw.get(name, value)
                raise ParamError(f"params.yaml: {key} = {shown!r} is invalid: expected {accepted}")
        values[name] = value
    return cls(**values)


def from_dict(raw: Any) -> Params:
    params = _build(Params, raw, "")
    t = params.train
    if t.warmup_epochs >= t.epochs and t.warmup_epochs > 0:
        raise ParamError(
            f"params.yaml: train.warmup_epochs = {t.warmup_epochs} is invalid: "
            f"expected fewer than train.epochs ({t.epochs})"
        )
    if t.low_res_size and t.low_res_size >= params.prepare.image_size:
        raise ParamError(
            f"params.yaml: train.low_res_size = {t.low_res_size} is invalid: expected 0 (off) or "
            f"less than prepare.image_size ({params.prepare.image_size})"
        )
    if t.low_res_size and t.low_res_epochs >= t.epochs:
        raise ParamError(
            f"params.yaml: train.low_res_epochs = {t.low_res_epochs} is invalid: expected fewer than "
            f"train.epochs ({t.epochs}), so the last epochs train at prepare.image_size"
        )
    u = params.unlabelled
    if u.enabled and t.warmup_epochs >= u.epochs and t.warmup_epochs > 0:
        raise ParamError(
            f"params.yaml: unlabelled.epochs = {u.epochs} is invalid: expected more than "
            f"train.warmup_epochs ({t.warmup_epochs}), the student's warm-up too"
        )
    if u.enabled and t.low_res_size and u.low_res_epochs >= u.epochs:
        raise ParamError(
            f"params.yaml: unlabelled.low_res_epochs = {u.low_res_epochs} is invalid: expected fewer than "
            f"unlabelled.epochs ({u.epochs}), so the student's last epochs train at prepare.image_size"
        )
    return params


def student(params: Params) -> Params:
    """The params the student trains with: the teacher's recipe, over `unlabelled`'s epochs."""
    u = params.unlabelled
    return replace(params, train=replace(params.train, epochs=u.epochs, low_res_epochs=u.low_res_epochs))


def load(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamError(f"{path}: not found; run from the project root, where params.yaml lives") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamError(f"{path}: not valid YAML{where}; fix the syntax") from None
    return from_dict(raw)


def as_dict(obj) -> dict:
    """Plain nested dict, for recording params next to results."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = as_dict(v) if is_dataclass(v) else v
    return out
