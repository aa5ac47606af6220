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
NORMALISE = ("joint", "separate")


class ParamError(UserError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


# Each setting declares its default and the rule its value must meet, side by side: a rule cannot
# drift from its field, and tests/test_params.py checks that every field has one.
def _between(lo, hi, lo_open=False, hi_open=False):
    def check(v):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return check, f"a number in {left}{lo}, {hi}{right}"


def _choice(options):
    return (lambda v: v in options), "one of " + ", ".join(options)


def _off_or(check, accepted):
    """0 turns the setting off; any other value must pass `check`."""
    return (lambda v: v == 0 or check(v)), f"0 (off) or {accepted}"


_FLAG = ((lambda v: True), "true or false")  # the type check is the whole rule


def setting(default, rule: tuple):
    """A params.yaml setting: its default and its rule, (check, what it accepts)."""
    return field(default=default, metadata={"rule": rule})


def per_member(default, rule: tuple, source: str):
    """A value each ensemble member sets for itself from `source`: never a params.yaml key of its own."""
    return field(default=default, metadata={"rule": rule, "per_member": source})


def section(cls):
    return field(default_factory=cls)


@dataclass(frozen=True)
class Data:
    competition: str = setting(
        "dogs-vs-cats-redux-kernels-edition",
        ((lambda v: bool(v.strip()) and "/" not in v), "a Kaggle competition slug"),
    )
    source: str = setting(
        "kaggle", ((lambda v: bool(v.strip())), "'kaggle' or a path to the competition zip or folder")
    )
    retries: int = setting(5, _between(0, 100))
    timeout_s: float = setting(60.0, _between(0, 3600, lo_open=True))


@dataclass(frozen=True)
class Split:
    seed: int = setting(42, _between(0, 2**31 - 1))
    n_train: int = setting(2000, _between(2, 10_000_000))
    n_val: int = setting(800, _between(2, 10_000_000))
    n_holdout: int = setting(1000, _between(2, 10_000_000))


@dataclass(frozen=True)
class Prepare:
    image_size: int = setting(128, _between(32, 1024))
    workers: int = setting(0, _between(0, 256))


@dataclass(frozen=True)
class Augment:
    flip: bool = setting(True, _FLAG)
    crop_scale: float = setting(0.35, _between(0.05, 1))
    rotation: float = setting(0.05, _between(0, 0.5))
    contrast: float = setting(0.2, _between(0, 1, hi_open=True))
    brightness: float = setting(0.1, _between(0, 1, hi_open=True))
    mixup: float = setting(0.0, _between(0, 10))


@dataclass(frozen=True)
class Train:
    model: str = setting("squeezenet1_1", _choice(MODELS))
    batch_norm: bool = setting(True, _FLAG)
    batch_norm_expand: bool = setting(True, _FLAG)
    bypass: bool = setting(True, _FLAG)
    classifier_relu: bool = setting(False, _FLAG)
    dropout: float = setting(0.5, _between(0, 1, hi_open=True))
    optimizer: str = setting("adamw", _choice(OPTIMIZERS))
    learning_rate: float = setting(0.003, _between(0, 10, lo_open=True))
    weight_decay: float = setting(0.05, _between(0, 1))
    momentum: float = setting(0.9, _between(0, 1, hi_open=True))
    schedule: str = setting("cosine", _choice(SCHEDULES))
    warmup_epochs: int = setting(3, _between(0, 10_000))
    epochs: int = setting(120, _between(1, 10_000))
    batch_size: int = setting(32, _between(1, 4096))
    label_smoothing: float = setting(0.1, _between(0, 0.5, hi_open=True))
    precision: str = setting("auto", _choice(PRECISIONS))
    seed: int = per_member(42, _between(0, 2**31 - 1), "ensemble.seeds")
    strategy: str = setting("default", _choice(STRATEGIES))
    shuffle_buffer: int = setting(4096, _between(1, 10_000_000))
    tta: bool = setting(True, _FLAG)
    tta_crop: float = setting(0.8, _off_or(lambda v: 0.3 <= v < 1, "a fraction of the side in [0.3, 1)"))
    low_res_size: int = setting(96, _off_or(lambda v: 32 <= v <= 1024, "a size in [32, 1024]"))
    low_res_epochs: int = setting(90, _between(0, 10_000))
    validation_freq: int = setting(5, _between(1, 10_000))
    ema: float = setting(0.0, _off_or(lambda v: 0.9 <= v < 1, "a decay per step in [0.9, 1)"))
    augment: Augment = section(Augment)


@dataclass(frozen=True)
class Unlabelled:
    enabled: bool = setting(False, _FLAG)
    ratio: int = setting(4, _between(1, 64))
    threshold: float = setting(0.95, _between(0.5, 1, hi_open=True))
    weight: float = setting(1.0, _between(0, 100, lo_open=True))
    epochs: int = setting(112, _between(1, 10_000))
    learning_rate: float = setting(0.001, _between(0, 10, lo_open=True))
    colour: float = setting(0.4, _between(0, 1, hi_open=True))
    cutout: float = setting(0.5, _between(0, 1))
    ema: float = setting(0.999, _off_or(lambda v: 0.9 <= v < 1, "a decay per step in [0.9, 1)"))
    normalise: str = setting("joint", _choice(NORMALISE))
    label_smoothing: float = setting(0.1, _between(0, 0.5, hi_open=True))
    fallback: bool = setting(True, _FLAG)


def _seeds(v):
    return 1 <= len(v) <= 64 and len(set(v)) == len(v) and all(0 <= s <= 2**31 - 1 for s in v)


@dataclass(frozen=True)
class Ensemble:
    seeds: tuple = setting((42,), (_seeds, "a list of 1 to 64 different training seeds, each in [0, 2147483647]"))


@dataclass(frozen=True)
class Edge:
    distil: bool = setting(False, _FLAG)
    test_photos: bool = setting(False, _FLAG)
    epochs: int = setting(30, _between(1, 10_000))
    learning_rate: float = setting(0.001, _between(0, 10, lo_open=True))


@dataclass(frozen=True)
class Submission:
    clip: float = setting(0.01, _between(0, 0.5, hi_open=True))


@dataclass(frozen=True)
class Export:
    calibration_images: int = setting(200, _between(1, 100_000))
    per_channel: bool = setting(True, _FLAG)
    latency_runs: int = setting(50, _between(1, 100_000))


@dataclass(frozen=True)
class Params:
    data: Data = section(Data)
    split: Split = section(Split)
    prepare: Prepare = section(Prepare)
    train: Train = section(Train)
    unlabelled: Unlabelled = section(Unlabelled)
    ensemble: Ensemble = section(Ensemble)
    edge: Edge = section(Edge)
    submission: Submission = section(Submission)
    export: Export = section(Export)


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
    if kind is tuple:  # a YAML list of whole numbers: the ensemble's seeds
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ParamError(
            f"params.yaml: {key} = {value!r} is invalid: expected a list of whole numbers, such as [42, 7]"
        )
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
        if "per_member" in f.metadata:
            if name in raw:
                raise ParamError(
                    f"params.yaml: {key} is set per ensemble member; list the seeds in {f.metadata['per_member']}"
                )
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            values[name] = _build(type(default), raw.get(name), key)
            continue
        value = _coerce(key, raw[name], default) if name in raw else default
        check, accepted = f.metadata["rule"]
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
    params = for_member(params, params.ensemble.seeds[0])  # what a stage that is not a member's sees
    u = params.unlabelled
    if u.enabled and t.strategy != "default":
        raise ParamError(
            f"params.yaml: train.strategy = {t.strategy!r} is invalid with unlabelled.enabled: the student "
            "trains on one device only; set train.strategy to default"
        )
    if params.edge.distil and len(params.ensemble.seeds) < 2:
        raise ParamError(
            "params.yaml: edge.distil = true is invalid with one ensemble member: there is no ensemble to "
            "distil; list two or more seeds in ensemble.seeds, or set edge.distil to false"
        )
    if params.edge.distil and t.strategy != "default":
        raise ParamError(
            f"params.yaml: train.strategy = {t.strategy!r} is invalid with edge.distil: distillation "
            "trains on one device only; set train.strategy to default"
        )
    return params


def for_member(params: Params, seed: int) -> Params:
    """The params one ensemble member trains with: the shared recipe, with its own training seed."""
    if seed not in params.ensemble.seeds:
        raise ParamError(
            f"params.yaml: ensemble.seeds = {list(params.ensemble.seeds)} has no member {seed}; add it there"
        )
    return replace(params, train=replace(params.train, seed=seed))


def _continued(params: Params, epochs: int, learning_rate: float, **train) -> Params:
    """A net that goes on from trained weights: `epochs` at `prepare.image_size` (no small-image phase),
    a one-epoch warm-up to `learning_rate`; `train` overrides any other setting of the recipe."""
    warmup = 1 if epochs > 1 else 0
    t = replace(params.train, epochs=epochs, low_res_size=0, learning_rate=learning_rate, warmup_epochs=warmup)
    return replace(params, train=replace(t, **train))


def student(params: Params) -> Params:
    """The params the student trains with: the teacher's recipe, continued from the teacher's weights for
    `unlabelled.epochs`, with its own rate, weight average and smoothing of the labelled photos' targets."""
    u = params.unlabelled
    return _continued(params, u.epochs, u.learning_rate, ema=u.ema, label_smoothing=u.label_smoothing)


def distilled(params: Params, seed: int) -> Params:
    """The params the edge net is distilled with: member `seed`'s recipe, continued from its weights for
    `edge.epochs` at `edge.learning_rate`."""
    return _continued(for_member(params, seed), params.edge.epochs, params.edge.learning_rate)


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
        if "per_member" in f.metadata:
            continue
        v = getattr(obj, f.name)
        out[f.name] = as_dict(v) if is_dataclass(v) else list(v) if isinstance(v, tuple) else v
    return out
