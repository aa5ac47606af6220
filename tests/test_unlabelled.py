"""Learning from the unlabelled test photos (FixMatch, consistency.py): what the student reads, that
the photos change what it learns, that the threshold decides which teach, and that the model
evaluate scores is the one the submission comes from."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dogs_vs_cats.params import ParamError, from_dict
from harness import run_cli, set_params, tiny_project

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_a_test_photo_teaches_only_where_the_weak_view_is_past_the_threshold():
    import tensorflow as tf

    from dogs_vs_cats.consistency import consistency_loss

    p_weak = tf.constant([[0.99, 0.01], [0.6, 0.4], [0.02, 0.98], [0.9, 0.1]])
    p_strong = tf.constant([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6]])
    # Cross-entropy of each strong view against its weak view's class: cat, cat, dog, cat.
    ce = -np.log([0.7, 0.2, 0.5, 0.4])
    for threshold, mask in ((0.95, [1, 0, 1, 0]), (0.55, [1, 1, 1, 1])):
        loss, got = consistency_loss(p_weak, p_strong, threshold)
        assert got.numpy().tolist() == mask
        assert loss.numpy() == pytest.approx(np.mean(ce * mask), rel=1e-5)


def test_the_weak_views_answer_is_a_target_not_something_the_loss_moves():
    import tensorflow as tf

    from dogs_vs_cats.consistency import consistency_loss

    p_weak, p_strong = tf.Variable([[0.99, 0.01], [0.03, 0.97]]), tf.Variable([[0.7, 0.3], [0.4, 0.6]])
    with tf.GradientTape() as tape:
        loss, _ = consistency_loss(p_weak, p_strong, 0.95)
    grad_weak, grad_strong = tape.gradient(loss, [p_weak, p_strong])
    assert grad_weak is None and np.abs(grad_strong.numpy()).sum() > 0


def _fixmatch(t, normalise: str = "joint"):
    """A seeded float32 FixMatch net at 32 px, compiled, and one step's batch: 8 labelled photos, 16 weak
    views, and 16 strong views all white, as far from a photo as a strong view gets."""
    import keras

    from dogs_vs_cats.consistency import FixMatch
    from dogs_vs_cats.model import from_params
    from dogs_vs_cats.recipe import compile_for_training

    keras.utils.set_random_seed(0)
    graph = from_params(t, 32)
    net = FixMatch(graph.inputs, graph.outputs, threshold=0.5, normalise=normalise)
    compile_for_training(net, t, 1)
    rng = np.random.default_rng(0)
    labelled, weak = (rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32") for n in (8, 16))
    strong = np.full((16, 32, 32, 3), 255.0, "float32")
    return net, ((labelled, weak, strong), np.eye(2, dtype="float32")[[0, 1] * 4])


def test_the_strong_views_are_normalised_but_never_move_the_running_statistics():
    net, batch = _fixmatch(from_dict({"train": {"precision": "float32"}}).train)
    (labelled, _, strong), _ = batch
    statistics = net.running_statistics()
    before = [v.numpy() for v in statistics]
    net.train_step(batch)
    after = [v.numpy() for v in statistics]
    assert any(not np.allclose(a, b) for a, b in zip(after, before))  # they did move

    # Moved exactly as the labelled batch alone moves them, with the step's new weights...
    for v, value in zip(statistics, before):
        v.assign(value)
    net(labelled, training=True)
    assert all(np.array_equal(v.numpy(), a) for v, a in zip(statistics, after))
    # ...which the strong views, had they been let in, would have moved elsewhere.
    for v, value in zip(statistics, before):
        v.assign(value)
    net(np.concatenate([labelled, strong]), training=True)
    assert any(not np.allclose(v.numpy(), a) for v, a in zip(statistics, after))


def test_normalised_apart_the_strong_views_change_the_step_but_the_statistics_are_the_labelled_batchs():
    from dogs_vs_cats.consistency import FixMatch

    t = from_dict({"train": {"precision": "float32", "warmup_epochs": 0}}).train  # the first step moves the weights
    weights = {}
    for normalise in ("joint", "separate"):
        net, batch = _fixmatch(t, normalise)
        (labelled, _, _), _ = batch
        statistics = net.running_statistics()
        before = [v.numpy() for v in statistics]
        if normalise == "separate":  # what the labelled batch alone moves them to, with the weights before the step
            net(labelled, training=True)
            expected = [v.numpy() for v in statistics]
            for v, value in zip(statistics, before):
                v.assign(value)
        net.train_step(batch)
        weights[normalise] = [v.numpy() for v in net.trainable_variables]
    after = [v.numpy() for v in statistics]
    assert all(np.array_equal(a, e) for a, e in zip(after, expected))
    assert any(not np.allclose(a, b) for a, b in zip(after, before))
    # The same photos, the same start, another normalisation: another step.
    assert any(not np.allclose(a, b) for a, b in zip(weights["joint"], weights["separate"]))
    assert FixMatch.from_config(net.get_config()).normalise == "separate"


def test_the_students_warm_up_is_an_epoch_or_enough_epochs_to_make_sixty_steps():
    from dogs_vs_cats.recipe import MIN_WARMUP_STEPS, warmup_epochs

    assert MIN_WARMUP_STEPS == 60
    assert warmup_epochs(30, 63) == 1  # 8,000 test photos, 128 a step
    assert warmup_epochs(30, 4) == 15  # 500 test photos: 60 steps
    assert warmup_epochs(10, 4) == 9  # never the whole run: the last epoch decays
    assert warmup_epochs(1, 4) == 0


def test_the_student_reads_no_holdout_solution_or_split_file_and_validation_only_to_monitor():
    deps = PIPELINE["student"]["do"]["deps"]
    data = [d for d in deps if d.startswith("data/")]
    assert data == [
        "data/members/${item}/teacher",
        "data/prepared/train.tfrecord",
        "data/prepared/test.tfrecord",
        "data/prepared/val.tfrecord",
    ]
    assert not any("solution" in d or "holdout" in d or "split" in d or "raw" in d for d in deps)
    readme = (ROOT / "README.md").read_text()
    assert (
        "validation only to monitor training, fit the temperature and choose between the student and its teacher"
        in " ".join(readme.split())
    )


def test_evaluate_submission_and_export_read_the_models_the_ensemble_makes_of_the_students():
    assert "data/members/${item}/model" in PIPELINE["student"]["do"]["outs"]
    assert "data/members" in PIPELINE["ensemble"]["deps"] and "data/model" in PIPELINE["ensemble"]["outs"]
    for stage in ("evaluate", "submission"):
        deps = PIPELINE[stage]["deps"]
        assert "data/model" in deps and not any("teacher" in d for d in deps), stage
    # export ships the edge stage's net, made of the students (the best, or taught by their ensemble).
    assert "data/members" in PIPELINE["edge"]["deps"] and "data/model" in PIPELINE["edge"]["deps"]
    assert "data/edge" in PIPELINE["export"]["deps"] and not any("teacher" in d for d in PIPELINE["export"]["deps"])


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"unlabelled": {"threshold": 0.4}}, "unlabelled.threshold = 0.4 is invalid"),
        ({"unlabelled": {"threshold": 1.0}}, "unlabelled.threshold = 1.0 is invalid"),
        ({"unlabelled": {"ratio": 0}}, "unlabelled.ratio = 0 is invalid"),
        ({"unlabelled": {"weight": 0}}, "unlabelled.weight = 0 is invalid"),
        ({"unlabelled": {"cutout": 1.5}}, "unlabelled.cutout = 1.5 is invalid"),
        ({"unlabelled": {"enabled": "yes"}}, "unlabelled.enabled = 'yes' is invalid: expected true or false"),
        (
            {"unlabelled": {"enabled": True}, "train": {"strategy": "mirrored"}},
            "train.strategy = 'mirrored' is invalid with unlabelled.enabled",
        ),
    ],
)
def test_bad_unlabelled_params_are_one_clear_line(raw, words):
    with pytest.raises(ParamError, match=words.replace(".", r"\.").replace("(", r"\(")):
        from_dict(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny generated competition with 16 test photos, trained as far as the teacher: once per module."""
    settings = {
        "train.epochs": 4,
        "train.validation_freq": 2,
        "unlabelled.epochs": 3,
        "unlabelled.ratio": 2,
        "unlabelled.threshold": 0.5,  # every test photo teaches: with two classes one is always >= 0.5
        "unlabelled.fallback": False,  # the student ships, whatever it scores: these tests look at what it learnt
    }
    return tiny_project(
        tmp_path_factory.mktemp("unlabelled"), 16, ("download", "split", "prepare", "train"), **settings
    )


@pytest.fixture
def tiny(trained, tmp_path):
    """A copy of that project of the test's own, to change as it likes."""
    return Path(shutil.copytree(trained, tmp_path / "project", symlinks=True))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _student(project: Path) -> tuple[list[np.ndarray], list[dict]]:
    """(the student's weights, its epoch log) after running the stage. Weights, not the file's bytes:
    a .keras file is a zip that stamps the time it was written."""
    import keras

    import dogs_vs_cats.layers  # noqa: F401  (registers the saved model's own layers)

    result = run_cli(["student"], project)
    assert result.returncode == 0, result.stderr
    weights = keras.models.load_model(project / "data/members/42/model/model.keras").get_weights()
    return weights, _rows(project / "metrics/members/42/student_log.csv")


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_off_by_default_the_shipped_model_is_the_teacher_and_metrics_say_unused(tiny):
    for stage in ("student", "ensemble"):
        result = run_cli([stage], tiny)
        assert result.returncode == 0, result.stderr
    teacher = (tiny / "data/members/42/teacher/model.keras").read_bytes()
    assert (tiny / "data/members/42/model/model.keras").read_bytes() == teacher
    assert (tiny / "data/model/model.keras").read_bytes() == teacher  # the one member, shipped as it is
    assert json.loads((tiny / "metrics/members/42/unlabelled.json").read_text()) == {"test_photos": 0}
    assert json.loads((tiny / "metrics/members/42/student.json").read_text())["used"] is False
    assert _rows(tiny / "metrics/members/42/student_log.csv") == []


@pytest.mark.slow
def test_on_the_student_learns_from_the_test_photos_and_is_what_evaluate_and_submission_use(tiny):
    from dogs_vs_cats.common import scores
    from dogs_vs_cats.inference import Predictor, predict_records

    set_params(tiny, **{"unlabelled.enabled": True})
    prepared = tiny / "data/prepared"
    # The holdout is moved away while the student trains, and a solution file with every label
    # wrong is planted where a careless stage might look for one: the student needs neither.
    holdout = prepared / "holdout.tfrecord"
    holdout.rename(holdout.with_suffix(".aside"))
    solution = tiny / "data/raw/dogs-vs-cats-redux-kernels-edition.solution.csv"
    solution.write_text("id,label\n" + "".join(f"{i},{i % 2}\n" for i in range(1, 17)))
    model, log = _student(tiny)
    holdout.with_suffix(".aside").rename(holdout)

    import keras

    assert not _same(model, keras.models.load_model(tiny / "data/members/42/teacher/model.keras").get_weights())
    assert [float(r["past_threshold"]) for r in log] == [1.0, 1.0, 1.0]  # threshold 0.5: every photo teaches
    assert json.loads((tiny / "metrics/members/42/unlabelled.json").read_text()) == {
        "test_photos": 16,
        "student_shipped": 1,
    }
    student = json.loads((tiny / "metrics/members/42/student.json").read_text())
    assert student["used"] is True and student["epochs"] == 3 and student["test_photos"] == 16

    for stage in ("ensemble", "evaluate", "submission"):
        result = run_cli([stage], tiny)
        assert result.returncode == 0, result.stderr
    predictor = Predictor(tiny / "data/model/model.keras")
    p, y, _ = predict_records(predictor, holdout)
    assert json.loads((tiny / "metrics/eval.json").read_text())["holdout"]["log_loss"] == scores(p, y)["log_loss"]
    p_test, _, names = predict_records(predictor, prepared / "test.tfrecord")
    submitted = {int(r["id"]): float(r["label"]) for r in _rows(tiny / "data/submission.csv")}
    for name, q in zip(names, np.clip(p_test, 0.01, 0.99)):
        assert abs(submitted[int(Path(name).stem)] - q) < 1e-5


@pytest.mark.slow
def test_a_student_worse_than_its_teacher_on_validation_is_not_shipped_and_the_metrics_say_so(tiny):
    from dogs_vs_cats.common import scores
    from dogs_vs_cats.inference import Predictor, predict_records

    model, teacher = tiny / "data/members/42/model/model.keras", tiny / "data/members/42/teacher/model.keras"
    # A learning rate of 5 wrecks whatever the teacher knew: the student ends worse on validation.
    set_params(tiny, **{"unlabelled.enabled": True, "unlabelled.fallback": True, "unlabelled.learning_rate": 5.0})
    result = run_cli(["student"], tiny)
    assert result.returncode == 0, result.stderr
    report = json.loads((tiny / "metrics/members/42/student.json").read_text())
    assert report["val"]["teacher"]["log_loss"] < report["val"]["student"]["log_loss"]
    assert report["shipped"] == "teacher" and model.read_bytes() == teacher.read_bytes()
    assert json.loads((tiny / "metrics/members/42/unlabelled.json").read_text()) == {
        "test_photos": 16,
        "student_shipped": 0,
    }
    said = f"{report['val']['teacher']['log_loss']} for its teacher: data/members/42/model/model.keras is the teacher's"
    assert said in result.stderr

    # Without the fallback the same student ships, and it scores on validation what the fallback measured.
    set_params(tiny, **{"unlabelled.fallback": False})
    result = run_cli(["student"], tiny)
    assert result.returncode == 0, result.stderr
    assert model.read_bytes() != teacher.read_bytes()
    assert json.loads((tiny / "metrics/members/42/unlabelled.json").read_text())["student_shipped"] == 1
    again = json.loads((tiny / "metrics/members/42/student.json").read_text())
    assert again["shipped"] == "student" and "val" not in again
    p, y, _ = predict_records(Predictor(model), tiny / "data/prepared/val.tfrecord")
    assert scores(p, y)["log_loss"] == report["val"]["student"]["log_loss"]


@pytest.mark.slow
def test_the_unlabelled_photos_change_what_is_learnt_and_the_same_pool_gives_the_same_model(tiny):
    set_params(tiny, **{"unlabelled.enabled": True})
    first, _ = _student(tiny)
    again, _ = _student(tiny)
    assert _same(again, first)  # seeded: the comparison below is the pool's doing, not chance's
    test = tiny / "data/prepared/test.tfrecord"
    shutil.copyfile(tiny / "data/prepared/holdout.tfrecord", test)  # other photos, as many
    swapped, _ = _student(tiny)
    assert not _same(swapped, first)


@pytest.mark.slow
def test_a_threshold_no_photo_reaches_teaches_nothing_and_says_so(tiny):
    set_params(tiny, **{"unlabelled.enabled": True, "unlabelled.threshold": 0.9999999})
    result = run_cli(["student"], tiny)
    assert result.returncode == 0, result.stderr
    assert [float(r["past_threshold"]) for r in _rows(tiny / "metrics/members/42/student_log.csv")] == [0.0, 0.0, 0.0]
    assert (
        "student@42: warning: no test photo passed unlabelled.threshold = 0.9999999 in any epoch, so the student "
        "learnt from the labelled photos alone; lower the threshold"
    ) in result.stderr


@pytest.mark.slow
def test_an_empty_pool_is_refused_in_one_line_and_nothing_is_trained(tiny):
    import tensorflow as tf

    set_params(tiny, **{"unlabelled.enabled": True})
    teacher_copy = (tiny / "data/members/42/model/model.keras").exists()
    with tf.io.TFRecordWriter(str(tiny / "data/prepared/test.tfrecord")):
        pass
    result = run_cli(["student"], tiny)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: data/prepared/test.tfrecord: holds no test photos to learn from; set unlabelled.enabled to false"
    )
    assert (tiny / "data/members/42/model/model.keras").exists() == teacher_copy
