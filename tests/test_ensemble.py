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
            "edge": (project / "data/model/edge.keras").read_bytes(),
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
        for stage in ("train@7", "student@7", "ensemble", "evaluate", "submission", "export"):
            assert f"Running stage '{stage}'" in out, stage
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
        assert report["edge"] == best
        assert (p / "data/model/edge.keras").read_bytes() == (p / f"data/members/{best}/model/model.keras").read_bytes()
        forms = json.loads((p / "metrics/export_forms.json").read_text())
        assert forms["keras"]["bytes"] == (p / "data/model/edge.keras").stat().st_size  # export ships one net

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
            wrong = run_cli(["train", "--seed", "9"], p)
            assert wrong.returncode == 1
            assert wrong.stderr.strip().splitlines()[-1] == (
                "error: params.yaml: ensemble.seeds = [42, 7, 5] has no member 9; add it there"
            )
        finally:
            set_params(p, **{"ensemble.seeds": [42, 7]})
