"""params.yaml validation: every bad value stops with one line naming the key."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dogs_vs_cats import params as P
from harness import ROOT, project_env, run_cli

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(dotted: str, value):
    raw = copy.deepcopy(DEFAULTS)
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


def test_shipped_params_file_is_valid_and_matches_the_code_defaults():
    assert P.load(ROOT / "params.yaml") == P.from_dict(DEFAULTS)
    # Every key in the file is known and every default in the code appears in the file.
    assert P.as_dict(P.from_dict(DEFAULTS)) == DEFAULTS
    # A key left out of the file takes the value the file ships with: the code's defaults are the file's.
    assert P.from_dict({}) == P.from_dict(DEFAULTS)


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("train.learning_rate", -0.1, "train.learning_rate = -0.1 is invalid: expected a number in (0, 10]"),
        (
            "train.model",
            "resnet50",
            "train.model = 'resnet50' is invalid: expected one of squeezenet1_0, squeezenet1_1",
        ),
        ("train.epochs", 2.5, "train.epochs = 2.5 is invalid: expected a whole number"),
        ("train.batch_norm", "yes", "train.batch_norm = 'yes' is invalid: expected true or false"),
        ("split.n_train", 0, "split.n_train = 0 is invalid"),
        ("prepare.image_size", 4096, "prepare.image_size = 4096 is invalid"),
        ("train.precision", "fp8", "expected one of auto, float32, mixed_bfloat16"),
        ("train.augment.crop_scale", 1.5, "train.augment.crop_scale = 1.5 is invalid"),
        ("submission.clip", 0.5, "submission.clip = 0.5 is invalid"),
        ("train.validation_freq", 0, "train.validation_freq = 0 is invalid: expected a number in [1, 10000]"),
        (
            "train.tta_crop",
            1.0,
            "train.tta_crop = 1.0 is invalid: expected 0 (off) or a fraction of the side in [0.3, 1)",
        ),
        ("train.ema", 0.5, "train.ema = 0.5 is invalid: expected 0 (off) or a decay per step in [0.9, 1)"),
        ("train.learning_rate", float("nan"), "expected a finite number"),
    ],
)
def test_bad_values_name_the_key_and_the_accepted_range(key, value, expect):
    with pytest.raises(P.ParamError) as err:
        P.from_dict(with_value(key, value))
    assert expect in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_keys_are_typos_and_are_refused():
    raw = copy.deepcopy(DEFAULTS)
    raw["train"]["learning_rte"] = 0.1
    with pytest.raises(P.ParamError, match="unknown key train.learning_rte; accepted keys here: model"):
        P.from_dict(raw)


def test_warmup_must_be_shorter_than_training():
    raw = with_value("train.warmup_epochs", 5)
    raw["train"]["epochs"] = 5
    with pytest.raises(P.ParamError, match="train.warmup_epochs = 5 is invalid: expected fewer than train.epochs"):
        P.from_dict(raw)


def test_cli_prints_one_line_and_exits_nonzero_on_a_bad_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("train.learning_rate", -1)))
    result = run_cli(["split"], cwd=tmp_path, env=project_env())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: train.learning_rate = -1 is invalid: expected a number in (0, 10]"
    ]
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    result = run_cli(["split"], cwd=tmp_path, env=project_env())
    assert result.returncode == 1 and "params.yaml: not valid YAML at line" in result.stderr
    assert "Traceback" not in result.stderr


# Values of every YAML type, to throw at every key.
yaml_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
leaf_keys = sorted(
    f"{section}.{k}" if not isinstance(v, dict) else f"{section}.{k}.{kk}"
    for section, body in DEFAULTS.items()
    for k, v in body.items()
    for kk in (v if isinstance(v, dict) else [None])
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(leaf_keys), value=yaml_values)
def test_fuzz_any_value_gives_a_valid_config_or_one_clean_error(key, value):
    try:
        params = P.from_dict(with_value(key, value))
    except P.ParamError as exc:
        message = str(exc)
        assert message.startswith("params.yaml: ") and "\n" not in message
        assert key in message or "train.warmup_epochs" in message or "unknown key" in message
    else:
        # Accepted: the value must have landed, typed as the default is.
        node = params
        for part in key.split("."):
            node = getattr(node, part)
        node = list(node) if isinstance(node, tuple) else node  # the seeds: a YAML list, kept as a tuple
        assert node == value and type(node) in (type(value), float, int)


@settings(max_examples=100, deadline=None)
@given(
    raw=st.one_of(yaml_values, st.dictionaries(st.sampled_from(list(DEFAULTS) + ["extra"]), yaml_values, max_size=4))
)
def test_fuzz_whole_documents_never_raise_anything_but_param_error(raw):
    try:
        P.from_dict(raw)
    except P.ParamError as exc:
        assert "\n" not in str(exc)


def _leaves(cls, prefix=""):
    """(dotted key, field) for every setting of a params dataclass, sections walked into."""
    from dataclasses import MISSING, fields, is_dataclass

    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        key = f"{prefix}{f.name}"
        if "per_member" in f.metadata:  # set from another key (train.seed from ensemble.seeds), not a key itself
            continue
        yield from _leaves(type(default), key + ".") if is_dataclass(default) else [(key, f)]


def test_every_setting_declares_its_rule_beside_it_and_its_default_meets_it():
    leaves = dict(_leaves(P.Params))
    assert len(leaves) == sum(1 for _ in _flat(DEFAULTS))  # every key of params.yaml, and no other
    for key, f in leaves.items():
        assert "rule" in f.metadata, f"{key} has no rule"
        check, accepted = f.metadata["rule"]
        assert check(f.default) and accepted, key


def test_every_rule_is_the_one_its_field_applies():
    # A value the rule refuses is refused under that field's own name: rule and field cannot drift apart.
    for key, f in _leaves(P.Params):
        check, accepted = f.metadata["rule"]
        if accepted == "true or false":
            continue
        candidates = (-1, 10**9, -0.5, 2.0, 1e9, "no such value", " ", "a/b", (), (1, 1))
        bad = next(v for v in candidates if type(v) is type(f.default) and not check(v))
        raw = list(bad) if isinstance(bad, tuple) else bad  # a tuple setting is a list in YAML
        with pytest.raises(P.ParamError, match=f"{key} = .* is invalid: expected {re.escape(accepted)}"):
            P.from_dict(with_value(key, raw))


def _flat(d, prefix=""):
    for k, v in d.items():
        yield from _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]


@pytest.mark.parametrize(
    "seeds, words",
    [
        ([], "ensemble.seeds = [] is invalid: expected a list of 1 to 64 different training seeds"),
        ([42, 42], "ensemble.seeds = [42, 42] is invalid: expected a list of 1 to 64 different"),
        ([-1], "ensemble.seeds = [-1] is invalid"),
        (42, "ensemble.seeds = 42 is invalid: expected a list of whole numbers, such as [42, 7]"),
        ([42, "7"], "ensemble.seeds = [42, '7'] is invalid: expected a list of whole numbers"),
        ([True], "ensemble.seeds = [True] is invalid: expected a list of whole numbers"),
    ],
)
def test_the_ensemble_seeds_must_be_a_list_of_different_whole_numbers(seeds, words):
    with pytest.raises(P.ParamError, match=re.escape(words)):
        P.from_dict({"ensemble": {"seeds": seeds}})


def test_each_member_trains_with_its_own_seed_and_train_seed_is_no_key_of_its_own():
    params = P.from_dict({"ensemble": {"seeds": [7, 42, 1]}})
    assert params.train.seed == 7  # what a stage that is no member's sees: the first member's
    assert [P.for_member(params, s).train.seed for s in (7, 42, 1)] == [7, 42, 1]
    assert P.for_member(params, 1).train == P.replace(params.train, seed=1)  # nothing else differs
    with pytest.raises(P.ParamError, match=re.escape("ensemble.seeds = [7, 42, 1] has no member 5; add it there")):
        P.for_member(params, 5)
    with pytest.raises(
        P.ParamError, match=re.escape("train.seed is set per ensemble member; list the seeds in ensemble.seeds")
    ):
        P.from_dict({"train": {"seed": 7}})


def test_distilling_needs_two_members_and_one_device_and_continues_the_best_members_recipe():
    with pytest.raises(P.ParamError, match=re.escape("edge.distil = true is invalid with one ensemble member")):
        P.from_dict({"edge": {"distil": True}})
    with pytest.raises(P.ParamError, match=re.escape("train.strategy = 'mirrored' is invalid with edge.distil")):
        P.from_dict({"edge": {"distil": True}, "ensemble": {"seeds": [42, 7]}, "train": {"strategy": "mirrored"}})
    params = P.from_dict(
        {"edge": {"distil": True, "epochs": 12, "learning_rate": 0.002}, "ensemble": {"seeds": [42, 7]}}
    )
    t = P.distilled(params, 7).train
    assert (t.seed, t.epochs, t.learning_rate, t.low_res_size, t.warmup_epochs) == (7, 12, 0.002, 0, 1)
    assert P.replace(t, seed=42, epochs=120, learning_rate=0.003, low_res_size=96, warmup_epochs=3) == params.train


def test_the_student_continues_the_teachers_recipe_with_its_own_rate_length_average_and_smoothing():
    params = P.from_dict({"unlabelled": {"epochs": 9, "learning_rate": 0.0003, "ema": 0.99, "label_smoothing": 0.0}})
    t = P.student(params).train
    own = dict(epochs=9, learning_rate=0.0003, ema=0.99, label_smoothing=0.0, low_res_size=0, warmup_epochs=1)
    assert {k: getattr(t, k) for k in own} == own
    assert params.train.label_smoothing == 0.1  # the teacher's own is untouched
    teachers = dict(epochs=120, learning_rate=0.003, ema=0.0, label_smoothing=0.1, low_res_size=96, warmup_epochs=3)
    assert P.replace(t, **teachers) == params.train
