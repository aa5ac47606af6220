"""Every bench script runs, in a tiny mode, so a move in the code cannot break one silently.

These check that each script runs to its end and prints its result; the figures themselves
are for bench/results/, measured at full size.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from harness import BIN, ROOT, TINY, make_competition, project_env, tiny_project

pytestmark = pytest.mark.slow
COMPETITION = "dogs-vs-cats-redux-kernels-edition"
TINY_SET = [f"--set={k}={v}" for k, v in TINY.items()]


def bench(script: str, *args: str, cwd=ROOT, timeout: float = 600, last: bool = False):
    """Run bench/`script` and return the first JSON object it printed, or with `last` the last JSON object or
    list that starts a line: where a bench prints its result after its progress."""
    result = subprocess.run(
        [str(BIN / "python"), str(ROOT / "bench" / script), *args],
        cwd=cwd,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
    out = result.stdout
    start = max(out.rfind("\n{"), out.rfind("\n[")) + 1 if last else out.index("{")
    obj, _ = json.JSONDecoder().raw_decode(out[start:])
    return obj


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny project whose every stage has run: what the benches that read a project need."""
    stages = ("download", "split", "prepare", "train", "student", "ensemble", "edge", "evaluate", "export")
    return tiny_project(tmp_path_factory.mktemp("bench"), 6, stages, **{"train.epochs": 2})


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny competition laid out as ../shared/kaggle is, with the solution file the fake server scores by."""
    folder = tmp_path_factory.mktemp("shared")
    comp = make_competition(folder / COMPETITION, n_per_class=30, n_test=6)
    ids = [line.split(",")[0] for line in (comp / "sample_submission.csv").read_text().splitlines()[1:]]
    # make_competition draws odd ids as cats, even ids as dogs.
    rows = "".join(f"{i},{int(i) % 2 == 0:d},Public\n" for i in ids)
    (folder / f"{COMPETITION}.solution.csv").write_text("id,label,Usage\n" + rows)
    return folder


def test_accuracy_runs_the_pipeline_and_scores_it_and_a_student_is_added_without_a_new_teacher(shared, tmp_path):
    quick = ["--set=train.epochs=2", "--set=export.calibration_images=8", "--set=export.latency_runs=2"]
    r = bench("accuracy.py", "--shared", str(shared), "--keep", str(tmp_path), *TINY_SET, *quick)
    assert 0 <= r["holdout_accuracy"] <= 1 and r["kaggle_log_loss"] is not None
    # A member's stages are named by its seed.
    assert {"train@42", "student@42", "ensemble", "edge", "evaluate", "export"} <= set(r["stages"])

    # add_student.sh carries the kept run's own settings over only as far as its seed: give the tiny ones again.
    tiny = [f"{k}={v}" for k, v in TINY.items()] + ["train.epochs=2", "export.calibration_images=8"]
    tiny += ["export.latency_runs=2", "unlabelled.epochs=2", "unlabelled.ratio=1"]
    result = subprocess.run(
        ["bash", str(ROOT / "bench/add_student.sh"), str(tmp_path), "a smoke run", *tiny],
        cwd=ROOT,
        env={**project_env(), "SHARED": str(shared / COMPETITION)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    s = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{") :])[0]
    assert s["student"]["used"] and s["unlabelled"]["test_photos"] == 6 and s["resumed"]
    # A resumed run records the params it ran with, read from the kept project, not from its own arguments.
    assert s["overrides"]["unlabelled.enabled"] is True and s["overrides"]["unlabelled.ratio"] == 1
    assert "train@42" not in s["stages"] and {"student@42", "evaluate"} <= set(s["stages"])  # the teacher was kept
    assert s["teacher"]["train_wall_s"] == r["train_wall_s"]

    # clip.py scores the kept run's shipped model at other clips: at the pipeline's own it agrees with
    # the submission stage, and at 0.49 every photo costs between -log(0.51) and -log(0.49).
    c = bench("clip.py", "--keep", str(tmp_path), "--shared", str(shared), "--clips", "0.01,0.49")
    assert [row["clip"] for row in c["clips"]] == [0.01, 0.49]
    assert c["clips"][0]["kaggle_log_loss"] == pytest.approx(s["kaggle_log_loss"], abs=1e-4)
    assert -math.log(0.51) - 1e-6 <= c["clips"][1]["holdout_log_loss"] <= -math.log(0.49) + 1e-6


def test_memory_runs_every_stage(shared):
    args = ["--train", "60", "--test", "6", "--size", "32", "--set=split.n_val=10", "--set=split.n_holdout=10"]
    r = bench("memory.py", "--shared", str(shared), *args, "--set=export.calibration_images=8")
    assert r["stages"]["train"]["peak_rss_mb"] > 0


def test_speed_trains_on_real_and_synthetic_input():
    r = bench("speed.py", "--images", "64", "--epochs", "1", "--rss-images", "96")
    assert r["train_real"]["images_per_s"] > 0 and r["train_synthetic"]["images_per_s"] > 0
    assert r["prepare_96_peak_rss_mb"] > 0 and r["train_96_peak_rss_mb"] > 0


def test_bf16_trains_in_both_precisions(tmp_path):
    bench("bf16.py", "--images", "64", "--seeds", "1", "--epochs", "1", "--json", str(tmp_path / "bf16.json"))
    r = json.loads((tmp_path / "bf16.json").read_text())
    assert [run["policy"] for run in r["runs"]] == ["float32", "mixed_bfloat16"]
    f32, bf = (run["holdout_log_loss"] for run in r["runs"])
    assert f32 > 0 and bf > 0 and r["summary"]["holdout_log_loss"]["bf16_minus_float32"] == round(bf - f32, 4)


def test_multiworker_trains_one_model_on_two_workers(shared):
    r = bench("multiworker.py", "--shared", str(shared / COMPETITION), "--epochs", "2", *TINY_SET)
    assert r["multi_worker"]["identical_models"] is True


def test_quantize_reads_a_project(project):
    r = bench("quantize.py", "--project", str(project), "--algorithms", "min_max_uniform_quantize")
    assert 0 <= r["keras"]["accuracy"] <= 1 and r["keras"]["log_loss"] > 0
    # one int4 form per activation type and choice of ends, each scored and smaller than the int8 file
    forms = {(v["algorithm"], v["activations"], v["ends_at_8_bits"]) for v in r["variants"]}
    assert forms == {("min_max_uniform_quantize", a, e) for a in ("int8", "float") for e in (True, False)}
    assert all(0 < v["bytes"] < r["int8_anatomy"]["int8 as shipped"]["bytes"] for v in r["variants"])


def test_resolution_scores_a_project_at_other_sizes(project):
    rows = bench("resolution.py", str(project), "32", "40", last=True)
    assert [row["size"] for row in rows] == [32, 40]
    assert all(row["holdout_log_loss"] > 0 and row["temperature"] > 0 for row in rows)


def test_averaging_trains_and_scores_each_decay(project):
    r = bench("averaging.py", str(project), "--decays", "0", "0.9", last=True)
    assert [row["decay"] for row in r["results"]] == [0.0, 0.9]
    assert all(row["holdout_log_loss"] > 0 and 0 <= row["holdout_accuracy"] <= 1 for row in r["results"])


def test_serve_load_sends_the_hostile_mix(project):
    model = project / "data/export/model_int8.tflite"
    args = ["--clients", "2", "--requests", "6", "--photos", "4", "--timeout", "2", "--slow-clients", "4"]
    r = bench("serve_load.py", "--model", str(model), *args)
    assert r["good_failures"] == 0 and r["hostile_answered_as_expected"]
    assert [c["status"] for c in r["costly_photos"]] == [413] * 4 and r["slowloris"]["answers"] == ["408"]


def test_arm64_runs_its_steps_natively(project):
    r = bench("arm64.py", "--project", str(project), "--photos", "4", "--native")
    assert all(f["labels_equal"] for f in r["forms"].values())


def test_archive_refuses_a_member_claiming_too_much():
    r = bench("archive.py", "--gib", "2.5")
    assert r["exit"] == 1 and r["said"] and not r["installed"] and not r["left_behind"]
