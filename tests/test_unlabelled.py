"""Learning from the unlabelled test photos: what the teacher labels, what the student learns from,
and that the model evaluate scores is the one the submission comes from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dogs_vs_cats.params import ParamError, from_dict
from dogs_vs_cats.stages.pseudolabel import choose
from harness import run_cli, set_params, tiny_project

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_a_photo_is_kept_when_the_teacher_is_sure_either_way():
    kept, label = choose(np.array([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95]), 0.9)
    assert kept.tolist() == [True, True, False, False, False, True, True]
    assert label.tolist() == [0, 0, 0, 1, 1, 1, 1]


def test_the_pseudolabel_stage_reads_no_validation_holdout_solution_or_labels_file():
    deps = PIPELINE["pseudolabel"]["deps"]
    data = [d for d in deps if d.startswith("data/")]
    assert data == ["data/teacher", "data/prepared/train.tfrecord", "data/prepared/test.tfrecord"]
    assert not any("solution" in d or "val" in d or "holdout" in d or "split" in d for d in deps)


def test_evaluate_submission_and_export_read_the_model_the_student_stage_writes():
    assert "data/model" in PIPELINE["student"]["outs"]
    for stage in ("evaluate", "submission", "export"):
        deps = PIPELINE[stage]["deps"]
        assert "data/model" in deps and "data/teacher" not in deps, stage


@pytest.mark.parametrize(
    "unlabelled, words",
    [
        ({"threshold": 0.4}, "unlabelled.threshold = 0.4 is invalid"),
        ({"threshold": 1.0}, "unlabelled.threshold = 1.0 is invalid"),
        ({"enabled": True, "epochs": 3}, "unlabelled.epochs = 3 is invalid: expected more than train.warmup_epochs"),
        ({"enabled": True, "epochs": 20, "low_res_epochs": 20}, "unlabelled.low_res_epochs = 20 is invalid"),
        ({"enabled": "yes"}, "unlabelled.enabled = 'yes' is invalid: expected true or false"),
    ],
)
def test_bad_unlabelled_params_are_one_clear_line(unlabelled, words):
    with pytest.raises(ParamError, match=words.replace(".", r"\.").replace("(", r"\(")):
        from_dict({"unlabelled": unlabelled})


@pytest.fixture
def tiny(tmp_path):
    """A tiny generated competition with 16 test photos, trained as far as the teacher."""
    settings = {
        "train.epochs": 4,
        "train.validation_freq": 2,
        "unlabelled.epochs": 3,
        "unlabelled.threshold": 0.5,  # every test photo kept: the tiny teacher is rarely sure
    }
    return tiny_project(tmp_path, 16, ("download", "split", "prepare", "train"), **settings)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _names_and_labels(path: Path, size: int = 32) -> list[tuple[str, int]]:
    from dogs_vs_cats.records import read_records

    return [(n.decode(), int(y)) for _, y, n in read_records(path, size).as_numpy_iterator()]


@pytest.mark.slow
def test_off_by_default_the_shipped_model_is_the_teacher_and_metrics_say_unused(tiny):
    for stage in ("pseudolabel", "student"):
        result = run_cli([stage], tiny)
        assert result.returncode == 0, result.stderr
    assert (tiny / "data/model/model.keras").read_bytes() == (tiny / "data/teacher/model.keras").read_bytes()
    used = json.loads((tiny / "metrics/unlabelled.json").read_text())
    assert used == {"test_photos": 0}
    assert json.loads((tiny / "metrics/student.json").read_text())["used"] is False
    assert _rows(tiny / "data/pseudo/labels.csv") == []
    assert _names_and_labels(tiny / "data/pseudo/student.tfrecord") == []


@pytest.mark.slow
def test_on_the_student_learns_the_teachers_labels_and_is_what_evaluate_and_submission_use(tiny):
    from dogs_vs_cats.common import scores
    from dogs_vs_cats.inference import Predictor, predict_records

    set_params(tiny, **{"unlabelled.enabled": True})
    prepared = tiny / "data/prepared"
    # Validation and holdout are moved away while the teacher labels: the stage must not need them.
    aside = {k: prepared / f"{k}.tfrecord" for k in ("val", "holdout")}
    for path in aside.values():
        path.rename(path.with_suffix(".aside"))
    # A solution file with every label wrong, where a careless stage might look for one.
    solution = tiny / "data/raw/dogs-vs-cats-redux-kernels-edition.solution.csv"
    solution.write_text("id,label\n" + "".join(f"{i},{i % 2}\n" for i in range(1, 17)))
    result = run_cli(["pseudolabel"], tiny)
    assert result.returncode == 0, result.stderr
    for path in aside.values():
        path.with_suffix(".aside").rename(path)

    # Every pseudo-label is the teacher's own answer, photo by photo.
    p_teacher, test_labels, names = predict_records(
        Predictor(tiny / "data/teacher/model.keras"), prepared / "test.tfrecord"
    )
    assert set(test_labels.tolist()) == {-1}  # the test store holds no labels to leak
    rows = {r["name"]: r for r in _rows(tiny / "data/pseudo/labels.csv")}
    assert sorted(rows) == sorted(names)
    for name, p in zip(names, p_teacher):
        assert int(rows[name]["label"]) == int(p >= 0.5)
        assert abs(float(rows[name]["p_dog"]) - p) < 1e-5
    used = json.loads((tiny / "metrics/unlabelled.json").read_text())
    assert used == {"test_photos": sum(int(r["kept"]) for r in rows.values())} == {"test_photos": 16}

    # The student's store: the labelled training photos, and the kept test photos with the teacher's labels.
    store = _names_and_labels(tiny / "data/pseudo/student.tfrecord")
    train = _names_and_labels(prepared / "train.tfrecord")
    pseudo = [(n, y) for n, y in store if n.startswith("test/")]
    assert sorted(set(store) - set(pseudo)) == sorted(train)
    assert sorted(pseudo) == sorted((n, int(r["label"])) for n, r in rows.items())
    assert [n for n, _ in store] != [n for n, _ in train + pseudo]  # shuffled together, not one after the other

    for stage in ("student", "evaluate", "submission"):
        result = run_cli([stage], tiny)
        assert result.returncode == 0, result.stderr
    model = tiny / "data/model/model.keras"
    assert model.read_bytes() != (tiny / "data/teacher/model.keras").read_bytes()
    student = json.loads((tiny / "metrics/student.json").read_text())
    assert student["used"] is True and student["epochs"] == 3 and student["pseudo_labelled"] == 16
    assert len(_rows(tiny / "metrics/student_log.csv")) == 3

    # evaluate scored, and the submission came from, the student's model.
    predictor = Predictor(model)
    p, y, _ = predict_records(predictor, prepared / "holdout.tfrecord")
    assert json.loads((tiny / "metrics/eval.json").read_text())["holdout"]["log_loss"] == scores(p, y)["log_loss"]
    p_test, _, names = predict_records(predictor, prepared / "test.tfrecord")
    submitted = {int(r["id"]): float(r["label"]) for r in _rows(tiny / "data/submission.csv")}
    for name, q in zip(names, np.clip(p_test, 0.01, 0.99)):
        assert abs(submitted[int(Path(name).stem)] - q) < 1e-5


@pytest.mark.parametrize(
    "rows, words",
    [
        (None, "data/pseudo/labels.csv: the test photos were not labelled; run `dvc repro pseudolabel`"),
        ([], "data/pseudo/labels.csv: the test photos were not labelled; run `dvc repro pseudolabel`"),
        (
            [("1", "0.6", "1", "0"), ("2", "0.3", "0", "0")],
            "data/pseudo/labels.csv: none of 2 test photos reached unlabelled.threshold = 0.9; lower it",
        ),
    ],
)
def test_the_student_refuses_to_train_without_pseudo_labels_in_one_line(tmp_path, monkeypatch, rows, words):
    from dogs_vs_cats.common import UserError, write_csv
    from dogs_vs_cats.stages import student

    monkeypatch.chdir(tmp_path)
    if rows is not None:
        write_csv("data/pseudo/labels.csv", ["name", "p_dog", "label", "kept"], rows)
    with pytest.raises(UserError) as error:
        student.run(from_dict({"unlabelled": {"enabled": True}}))
    assert str(error.value) == words
