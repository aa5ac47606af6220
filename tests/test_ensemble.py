"""Ensembles: each member its own DVC stages, combined in logit space, and their spread reported."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from dogs_vs_cats.calibrate import fit_temperature
from dogs_vs_cats.common import scores
from harness import BIN, project_env, run_cli, set_params, tiny_project

QUICK = {"train.epochs": 2, "export.calibration_images": 8, "export.latency_runs": 2}


def dvc(args, cwd):
    return subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=project_env(), capture_output=True, text=True)


def _logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def test_members_are_combined_by_their_mean_log_odds_over_one_temperature():
    import keras

    from dogs_vs_cats.layers import LogitMean

    p = [np.array([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]]), np.array([[0.3, 0.7], [0.99, 0.01], [0.2, 0.8]])]
    got = keras.ops.convert_to_numpy(LogitMean(0.5)([np.float32(x) for x in p]))
    gap = (_logit(p[0][:, 1]) + _logit(p[1][:, 1])) / 2 / 0.5
    np.testing.assert_allclose(got[:, 1], 1 / (1 + np.exp(-gap)), rtol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-6)
    assert LogitMean.from_config(LogitMean(0.5).get_config()).temperature == 0.5


def _bright_is_dog():
    """A fixed teacher: P(dog) rises with a photo's brightness."""
    import keras

    teacher = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    teacher.layers[-1].set_weights([np.array([[-0.02, 0.02]] * 3, "float32"), np.array([3.8, -3.8], "float32")])
    return keras.Sequential([teacher, keras.layers.Softmax()])


def test_a_distilled_net_learns_the_teachers_answers_and_keeps_only_its_own_weights(tmp_path):
    import keras

    from dogs_vs_cats.distillation import Distil
    from dogs_vs_cats.model import from_params
    from dogs_vs_cats.params import Train

    keras.utils.set_random_seed(0)
    graph = from_params(Train(dropout=0.0), 32)
    net = Distil(graph.inputs, graph.outputs)
    net.attach(teacher := _bright_is_dog())
    net.compile(optimizer=keras.optimizers.Adam(3e-3))
    x = np.concatenate([np.full((8, 32, 32, 3), v, "float32") for v in (40.0, 220.0)])
    x += np.random.default_rng(0).uniform(-20, 20, x.shape).astype("float32")
    target = keras.ops.convert_to_numpy(teacher(x))
    assert target[:8, 1].max() < 0.2 and target[8:, 1].min() > 0.8  # a teacher with something to teach

    def distance():  # cross-entropy of the net's answers against the teacher's
        p = np.clip(keras.ops.convert_to_numpy(net(x, training=False)), 1e-7, 1)
        return float(-(target * np.log(p)).sum(axis=1).mean())

    before = distance()
    for _ in range(40):
        logs = net.train_on_batch(x, np.zeros(len(x)), return_dict=True)
    assert distance() < before - 0.2
    assert logs["agreement"] == 1.0 and set(logs) == {"loss", "agreement"}
    # The teacher is attached, not tracked: the weights, the checkpoint and what ships are the student's.
    assert len(net.get_weights()) == len(graph.get_weights())
    net.save(tmp_path / "last.keras")
    again = keras.models.load_model(tmp_path / "last.keras")
    assert isinstance(again, Distil)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), net.get_weights()))


def test_distillation_counts_the_test_photos_only_when_asked(tmp_path, monkeypatch):
    from dogs_vs_cats import distillation
    from dogs_vs_cats.params import Params

    monkeypatch.setattr(distillation, "count_records", lambda path: 100)  # the training photos
    alone, with_test = (distillation.Distillation(tmp_path / "e", tmp_path / "s", pool) for pool in (0, 60))
    assert alone.steps(Params()) == 4 and with_test.steps(Params()) == 5  # batches of 32
    assert [p.name for p in alone.sources] == ["train.tfrecord"]
    assert [p.name for p in with_test.sources] == ["train.tfrecord", "test.tfrecord"]
    assert {tmp_path / "e", tmp_path / "s"} <= set(with_test.inputs)  # a changed teacher refuses a checkpoint


@pytest.mark.slow
class TestTwoMembers:
    """A tiny project reproduced with one member, committed, then with a second seed added."""

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, tmp_path_factory):
        project = tiny_project(tmp_path_factory.mktemp("ensemble"), 4, (), **QUICK)
        first = dvc(["repro"], project)
        assert first.returncode == 0, first.stderr[-3000:]
        one = {
            "model": (project / "data/model/model.keras").read_bytes(),
            "member": (project / "data/members/42/model/model.keras").read_bytes(),
            "edge": (project / "data/edge/model.keras").read_bytes(),
            "eval": json.loads((project / "metrics/eval.json").read_text()),
        }
        subprocess.run(["git", "add", "-A"], cwd=project, check=True)
        subprocess.run(["git", "commit", "-qm", "one member"], cwd=project, check=True)
        set_params(project, **{"ensemble.seeds": [42, 7]})
        second = dvc(["repro"], project)
        assert second.returncode == 0, second.stderr[-3000:]
        return {"project": project, "one": one, "second": second}

    def test_one_member_is_shipped_as_it_is(self, runs):
        one = runs["one"]
        assert one["model"] == one["member"] == one["edge"]
        assert "members" not in one["eval"] and "spread" not in one["eval"]

    def test_adding_a_member_trains_only_that_member(self, runs):
        out = runs["second"].stdout
        for stage in ("train@7", "student@7", "ensemble", "edge", "evaluate", "submission"):
            assert f"Running stage '{stage}'" in out, stage
        # export runs again only if the edge net changed: a new member that is not the best changes nothing there.
        edge_changed = (runs["project"] / "data/edge/model.keras").read_bytes() != runs["one"]["edge"]
        assert ("Running stage 'export'" in out) == edge_changed
        for stage in ("train@42", "student@42", "prepare"):
            assert f"Running stage '{stage}'" not in out, stage
        assert json.loads(dvc(["status", "--json"], runs["project"]).stdout) == {}

    def test_the_ensembles_answer_is_the_combination_of_its_members(self, runs):
        from dogs_vs_cats.inference import Predictor, predict_records

        p = runs["project"]
        report = json.loads((p / "metrics/ensemble.json").read_text())
        assert report["members"] == 2 and report["seeds"] == [42, 7]
        holdout = p / "data/prepared/holdout.tfrecord"
        members = {s: predict_records(Predictor(p / f"data/members/{s}/model/model.keras"), holdout) for s in (42, 7)}
        ensemble, y, _ = predict_records(Predictor(p / "data/model/model.keras"), holdout)
        gap = np.mean([_logit(members[s][0]) for s in (42, 7)], axis=0) / report["temperature"]
        np.testing.assert_allclose(ensemble, 1 / (1 + np.exp(-gap)), atol=2e-4)
        assert not np.allclose(members[42][0], members[7][0])  # two seeds, two different nets

        # The temperature is the one that fits the mean log-odds best on validation.
        val = p / "data/prepared/val.tfrecord"
        gaps = [_logit(predict_records(Predictor(p / f"data/members/{s}/model/model.keras"), val)[0]) for s in (42, 7)]
        yv = predict_records(Predictor(p / "data/model/model.keras"), val)[1]
        mean = np.mean(gaps, axis=0)
        expected = fit_temperature(np.stack([np.zeros_like(mean), mean], axis=-1)[None], yv)
        assert report["temperature"] == pytest.approx(expected, rel=1e-3)

        ev = json.loads((p / "metrics/eval.json").read_text())
        assert ev["holdout"]["log_loss"] == scores(ensemble, y)["log_loss"]
        for s in (42, 7):
            assert ev["members"][str(s)]["log_loss"] == scores(*members[s][:2])["log_loss"]
        lls = [ev["members"][s]["log_loss"] for s in ("42", "7")]
        assert ev["spread"]["log_loss"]["mean"] == pytest.approx(np.mean(lls), abs=1e-4)
        assert ev["spread"]["log_loss"]["sd"] == pytest.approx(np.std(lls, ddof=1), abs=1e-4)
        assert (ev["spread"]["log_loss"]["min"], ev["spread"]["log_loss"]["max"]) == (min(lls), max(lls))

    def test_the_edge_net_is_the_member_with_the_lowest_validation_log_loss(self, runs):
        p = runs["project"]
        report = json.loads((p / "metrics/ensemble.json").read_text())
        best = min((42, 7), key=lambda s: report["val"][str(s)]["log_loss"])
        assert json.loads((p / "metrics/edge.json").read_text()) == {
            "distilled": False,
            "seed": best,
            "model": f"data/members/{best}/model/model.keras",
        }
        assert (p / "data/edge/model.keras").read_bytes() == (p / f"data/members/{best}/model/model.keras").read_bytes()
        forms = json.loads((p / "metrics/export_forms.json").read_text())
        assert forms["keras"]["bytes"] == (p / "data/edge/model.keras").stat().st_size  # export ships one net

    def test_metrics_diff_shows_each_member_and_the_spread(self, runs):
        result = dvc(["metrics", "diff", "--json"], runs["project"])
        assert result.returncode == 0, result.stderr
        changed = json.loads(result.stdout)["metrics/eval.json"]
        assert {"members.42.log_loss", "members.7.log_loss", "spread.log_loss.sd", "spread.accuracy.mean"} <= set(
            changed
        )
        assert changed["members.7.accuracy"]["old"] is None and changed["members.7.accuracy"]["new"] is not None

    def test_a_member_with_no_model_is_named_in_one_line(self, runs):
        p = runs["project"]
        set_params(p, **{"ensemble.seeds": [42, 7, 5]})
        try:
            result = run_cli(["ensemble"], p)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines()[-1] == (
                "error: data/members/5/model/model.keras: missing; run `dvc repro student@5` (or `dvc repro`) first"
            )
            stale = run_cli(["edge"], p)  # the ensemble's report still scores the two members
            assert stale.returncode == 1
            assert stale.stderr.strip().splitlines()[-1] == (
                "error: metrics/ensemble.json: scores members [7, 42], not ensemble.seeds = [42, 7, 5]; "
                "run `dvc repro ensemble` first"
            )
            wrong = run_cli(["train", "--seed", "9"], p)
            assert wrong.returncode == 1
            assert wrong.stderr.strip().splitlines()[-1] == (
                "error: params.yaml: ensemble.seeds = [42, 7, 5] has no member 9; add it there"
            )
        finally:
            set_params(p, **{"ensemble.seeds": [42, 7]})

    def test_distilling_trains_only_the_edge_net_and_export_ships_it(self, runs):
        p = runs["project"]
        set_params(p, **{"edge.distil": True, "edge.epochs": 2})
        try:
            result = dvc(["repro"], p)
            assert result.returncode == 0, result.stderr[-3000:]
            for stage in ("edge", "export"):
                assert f"Running stage '{stage}'" in result.stdout, stage
            for stage in ("train@42", "train@7", "student@42", "student@7", "ensemble", "evaluate", "submission"):
                assert f"Running stage '{stage}'" not in result.stdout, stage
            ensemble = json.loads((p / "metrics/ensemble.json").read_text())
            best = min((42, 7), key=lambda s: ensemble["val"][str(s)]["log_loss"])
            report = json.loads((p / "metrics/edge.json").read_text())
            assert report["distilled"] is True and report["seed"] == best
            assert report["test_photos"] == 0 and report["epochs"] == 2 and report["val_log_loss"] is not None
            edge = (p / "data/edge/model.keras").read_bytes()
            assert edge != (p / f"data/members/{best}/model/model.keras").read_bytes()
            forms = json.loads((p / "metrics/export_forms.json").read_text())
            assert forms["keras"]["bytes"] == len(edge)
            log = (p / "metrics/edge_log.csv").read_text().splitlines()
            assert len(log) == 3 and "agreement" in log[0]
        finally:
            set_params(p, **{"edge.distil": False})

    def test_distilling_one_member_is_refused_in_one_line(self, runs):
        p = runs["project"]
        set_params(p, **{"edge.distil": True, "ensemble.seeds": [42]})
        try:
            result = run_cli(["edge"], p)
            assert result.returncode == 1
            assert result.stderr.strip().splitlines()[-1] == (
                "error: params.yaml: edge.distil = true is invalid with one ensemble member: there is no ensemble to "
                "distil; list two or more seeds in ensemble.seeds, or set edge.distil to false"
            )
        finally:
            set_params(p, **{"edge.distil": False, "ensemble.seeds": [42, 7]})
