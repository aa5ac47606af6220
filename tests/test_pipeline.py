"""End to end: `dvc repro` in a fresh git repository, the real kaggle client, the fake Kaggle server."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import zipfile

import pytest
import yaml

from dogs_vs_cats.stages import MEMBER_STAGES, STAGES
from dogs_vs_cats.submission_file import check
from harness import (
    BIN,
    ROOT,
    SHARED_COMPETITION,
    copy_project,
    free_ports,
    image_bytes,
    project_env,
    run_cli,
    set_params,
)

pytestmark = pytest.mark.slow  # dvc repro of the real photos, then the commands on its outputs

SMALL = {
    "split.n_train": 100,
    "split.n_val": 40,
    "split.n_holdout": 40,
    "prepare.image_size": 64,
    "train.epochs": 2,
    "train.warmup_epochs": 1,
    "train.batch_size": 25,
    "train.low_res_size": 48,
    "train.low_res_epochs": 1,  # progressive resizing, as by default
}


# The stages as dvc names them with the default's one member (seed 42): train@42, student@42.
NAMED = [f"{s}@42" if s in MEMBER_STAGES else s for s in STAGES]
MEMBER = {"train@42", "student@42"}


def dvc(args, cwd, env, timeout=900):
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """One small `dvc repro` shared by the assertions below (it is the slow part)."""
    from fake_kaggle import FakeKaggle

    root = tmp_path_factory.mktemp("e2e")
    project = copy_project(root / "project")
    (root / "home").mkdir()
    set_params(project, **SMALL)
    with FakeKaggle() as fake:
        env = project_env(fake.env(), home=root / "home")
        first = dvc(["repro"], project, env)
        status = dvc(["status"], project, env)
        second = dvc(["repro"], project, env)
        yield {
            "project": project,
            "env": env,
            "first": first,
            "status": status,
            "second": second,
            "requests": list(fake.requests),
            "fake": fake,
        }


def test_repro_runs_every_stage_against_the_fake_kaggle(repro):
    first = repro["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in NAMED:
        assert f"Running stage '{stage}'" in first.stdout
    assert "/v1/competitions.CompetitionApiService/DownloadDataFiles" in repro["requests"]


def test_stage_outputs_exist_and_make_sense(repro):
    p = repro["project"]
    assert (p / "data/raw/train.zip").read_bytes() == (SHARED_COMPETITION / "train.zip").read_bytes()
    sets = {k: list(csv.DictReader(open(p / f"data/split/{k}.csv"))) for k in ("train", "val", "holdout")}
    assert {k: len(v) for k, v in sets.items()} == {"train": 100, "val": 40, "holdout": 40}
    assert sum(int(r["label"]) for r in sets["train"]) == 50
    with zipfile.ZipFile(SHARED_COMPETITION / "train.zip") as zf:
        assert {r["file"] for rows in sets.values() for r in rows} <= set(zf.namelist())

    prepared = json.loads((p / "metrics/prepare.json").read_text())
    assert prepared["images"] == {"train": 100, "val": 40, "holdout": 40, "test": 500}
    assert (p / "data/prepared/train.tfrecord").stat().st_size > 100 * 64 * 64 * 3

    log_rows = list(csv.DictReader(open(p / "metrics/members/42/train_log.csv")))
    assert [int(r["epoch"]) for r in log_rows] == [1, 2]
    # Validation every train.validation_freq (3) epochs and after the last: here only epoch 2.
    val_rows = list(csv.DictReader(open(p / "metrics/members/42/val_log.csv")))
    assert [int(r["epoch"]) for r in val_rows] == [2]
    assert 0 <= float(val_rows[0]["val_accuracy"]) <= 1 and float(val_rows[0]["val_log_loss"]) > 0
    assert all(float(r["train_s"]) > 0 for r in log_rows)

    ev = json.loads((p / "metrics/eval.json").read_text())
    # Only what changes with the model: `dvc metrics show` stays a few columns wide.
    assert set(ev) == {"holdout", "val"}
    assert set(ev["holdout"]) == {"accuracy", "log_loss", "roc_auc"} and set(ev["val"]) == {"accuracy", "log_loss"}
    for key in ("val", "holdout"):
        assert 0 <= ev[key]["accuracy"] <= 1 and ev[key]["log_loss"] > 0
    assert 0 <= ev["holdout"]["roc_auc"] <= 1
    train = json.loads((p / "metrics/members/42/train.json").read_text())
    # The default net: SqueezeNet v1.1 with batch normalisation (723,522 weights + 8,832 BN values).
    assert (
        train["params"] == 732_354
        and train["model_bytes"] == (p / "data/members/42/teacher/model.keras").stat().st_size
    )
    for name in ("metrics/training_curves.png", "metrics/plots/confusion.png", "metrics/plots/roc.png"):
        assert (p / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    confusion = list(csv.DictReader(open(p / "metrics/plots/confusion.csv")))
    assert len(confusion) == 40 and {r["actual"] for r in confusion} == {"cat", "dog"}
    roc = list(csv.DictReader(open(p / "metrics/plots/roc.csv")))
    assert float(roc[0]["fpr"]) == 0 and float(roc[-1]["tpr"]) == 1

    export = json.loads((p / "metrics/export_forms.json").read_text())
    assert set(export) == {"keras", "float32", "float16", "int8", "int4", "int8_vs_keras"}
    for form in ("int8", "int4"):
        assert json.loads((p / f"metrics/{form}.json").read_text()) == {
            k: export[form][k] for k in ("accuracy", "log_loss", "bytes")
        }
    assert export["int4"]["bytes"] < 0.6 * export["int8"]["bytes"]
    for form in ("float32", "float16", "int8", "int4"):
        assert export[form]["bytes"] == (p / f"data/export/model_{form}.tflite").stat().st_size
        # The .tflite files score the same 40 holdout photos as the Keras model, inside LiteRT.
        assert abs(export[form]["accuracy"] - ev["holdout"]["accuracy"]) <= (0.0 if form == "float32" else 0.05), form
    assert (
        export["keras"]["accuracy"] == ev["holdout"]["accuracy"]
        and export["keras"]["log_loss"] == ev["holdout"]["log_loss"]
    )
    assert export["int8"]["bytes"] * 3 < export["keras"]["bytes"]

    sub = p / "data/submission.csv"
    assert check(sub, SHARED_COMPETITION / "sample_submission.csv") == 500
    rows = list(csv.reader(open(sub)))
    assert rows[0] == ["id", "label"]
    assert [int(r[0]) for r in rows[1:]] == sorted(int(r[0]) for r in rows[1:])
    labels = [float(r[1]) for r in rows[1:]]
    assert min(labels) >= 0.01 and max(labels) <= 0.99


def test_nothing_left_to_do_afterwards(repro):
    assert repro["status"].returncode == 0
    assert "Data and pipelines are up to date" in repro["status"].stdout
    second = repro["second"]
    assert second.returncode == 0 and "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout


def test_plots_render_the_demo_figure_and_the_holdout_curves(repro):
    out = repro["project"] / "plots_html"
    result = dvc(["plots", "show", "-o", str(out)], repro["project"], repro["env"])
    assert result.returncode == 0, result.stderr
    html = (out / "index.html").read_text()
    for title in ("Accuracy per epoch", "Holdout confusion matrix", "Holdout ROC curve", "precision-recall"):
        assert title in html
    for picture in ("training_curves.png", "confusion.png", "roc.png"):  # the stages' own pictures, too
        assert picture in html
    screenshot_renders(out / "index.html", out.parent / "plots_show.png")


def test_metrics_show_is_a_few_columns_of_scores_and_no_timings(repro):
    result = dvc(["metrics", "show", "--json"], repro["project"], repro["env"])
    assert result.returncode == 0, result.stderr
    (workspace,) = json.loads(result.stdout).values()
    files = workspace["data"]
    expected = {"metrics/eval.json", "metrics/members/42/unlabelled.json", "metrics/int8.json", "metrics/int4.json"}
    assert set(files) == expected

    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]

    columns = {c for f in files.values() for c in leaves(f["data"])}
    assert len(columns) == 9 and not any(w in c for c in columns for w in ("latency", "_s", "per_s", "wall"))
    table = dvc(["metrics", "show"], repro["project"], repro["env"]).stdout.splitlines()
    assert len(table) == 5 and max(map(len, table)) <= 180, table  # a row per file, in a 180-column terminal


def test_the_trained_model_predicts_new_images(repro, tmp_path):
    (tmp_path / "a.jpg").write_bytes(image_bytes("cat", (200, 150)))
    out = tmp_path / "p.csv"
    result = run_cli(
        [
            "predict",
            "--model",
            str(repro["project"] / "data/model/model.keras"),
            str(tmp_path / "a.jpg"),
            "--out",
            str(out),
        ],
        repro["project"],
        env=repro["env"],
    )
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(open(out)))
    assert 0 < float(row["p_dog"]) < 1


def test_changing_a_training_param_does_not_rerun_download_split_or_prepare(repro):
    p, env = repro["project"], repro["env"]
    assert json.loads(dvc(["status", "--json"], p, env).stdout) == {}
    set_params(p, **{"train.label_smoothing": 0.05})
    result = dvc(["status", "--json"], p, env)
    changed = set(json.loads(result.stdout))
    assert changed == MEMBER | {"edge"}  # the student trains by the teacher's recipe, and so would distillation
    set_params(p, **{"train.label_smoothing": SMALL.get("train.label_smoothing", 0.1)})


def test_an_unlabelled_setting_reruns_the_student_alone_never_the_teacher(repro):
    p, env = repro["project"], repro["env"]
    unlabelled = yaml.safe_load((p / "params.yaml").read_text())["unlabelled"]
    for key, value, stages in (("epochs", 7, {"student@42"}), ("threshold", 0.9, {"student@42"})):
        set_params(p, **{f"unlabelled.{key}": value})
        assert set(json.loads(dvc(["status", "--json"], p, env).stdout)) == stages, key
        set_params(p, **{f"unlabelled.{key}": unlabelled[key]})
    assert json.loads(dvc(["status", "--json"], p, env).stdout) == {}


def _edit_and_status(repro, rel: str) -> set[str]:
    """The stages `dvc status` calls changed after appending a comment to `rel`; the file is then restored."""
    p, env = repro["project"], repro["env"]
    path = p / rel
    before = path.read_bytes()
    try:
        path.write_bytes(before + b"\n# an edit\n")
        result = dvc(["status", "--json"], p, env)
        assert result.returncode == 0, result.stderr
        return set(json.loads(result.stdout))
    finally:
        path.write_bytes(before)


def test_editing_code_reruns_exactly_the_stages_that_run_it(repro):
    assert json.loads(dvc(["status", "--json"], repro["project"], repro["env"]).stdout) == {}
    # The layers the saved model is made of: training builds them, every reader of the model runs them.
    readers = {"ensemble", "edge", "evaluate", "submission", "export"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/layers.py") == MEMBER | readers
    # The edge stage trains too (with edge.distil), so it runs the trainer and builds the net.
    assert _edit_and_status(repro, "src/dogs_vs_cats/model.py") == MEMBER | {"edge"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/trainer.py") == MEMBER | {"edge"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/consistency.py") == {"student@42"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/distillation.py") == {"edge"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/images.py") == {"prepare"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/stages/ensemble.py") == {"ensemble"}
    assert _edit_and_status(repro, "src/dogs_vs_cats/params.py") == set(NAMED)
    assert _edit_and_status(repro, "src/dogs_vs_cats/stages/__init__.py") == set(NAMED)


def test_editing_a_command_or_its_options_reruns_no_stage(repro):
    # cli.py holds every option of predict, serve and submit; no stage runs it.
    for untouched in ("cli.py", "commands/predict.py", "commands/serve.py", "commands/submit.py"):
        assert _edit_and_status(repro, f"src/dogs_vs_cats/{untouched}") == set(), untouched
    assert _edit_and_status(repro, "README.md") == set()


def test_editing_the_pictures_reruns_no_training(repro):
    # The training curves are drawn by evaluate from the logs train writes, so a colour costs seconds.
    assert _edit_and_status(repro, "src/dogs_vs_cats/figures.py") == {"evaluate"}


def test_training_again_on_the_same_commit_changes_no_score(repro):
    p, env = repro["project"], repro["env"]
    before = {
        f: (p / f).read_text()
        for f in (
            "metrics/eval.json",
            "metrics/int8.json",
            "metrics/int4.json",
            "metrics/members/42/train_log.csv",
            "data/submission.csv",
        )
    }
    forced = dvc(["repro", "-f", "-s", "train"], p, env)  # the group's name: every member's train stage
    assert forced.returncode == 0 and "Running stage 'train@42'" in forced.stdout, forced.stderr[-2000:]
    again = dvc(["repro"], p, env)  # the saved model's file differs (Keras stamps the date), so the readers re-run
    assert again.returncode == 0, again.stderr[-2000:]
    after = {f: (p / f).read_text() for f in before}
    train_log = [
        line.rsplit(",", 1)[0] for line in after["metrics/members/42/train_log.csv"].splitlines()
    ]  # timings aside
    assert train_log == [line.rsplit(",", 1)[0] for line in before["metrics/members/42/train_log.csv"].splitlines()]
    assert after["metrics/eval.json"] == before["metrics/eval.json"]
    assert after["data/submission.csv"] == before["data/submission.csv"]  # every row, to the byte
    for form in ("int8", "int4"):
        assert after[f"metrics/{form}.json"] == before[f"metrics/{form}.json"]


def test_rerunning_prepare_on_the_same_inputs_does_not_retrain(repro):
    # prepare's report holds a throughput, which differs every run: train must depend on the
    # prepared images only, and those must come out byte-identical.
    import hashlib

    p, env = repro["project"], repro["env"]

    def digests():  # a failure then shows which file differs, not megabytes of pixels
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (p / "data/prepared").glob("*.tfrecord")}

    before = digests()
    assert len(before) == 4
    result = dvc(["repro", "--force", "--single-item", "prepare"], p, env)
    assert result.returncode == 0, result.stderr
    assert digests() == before
    assert json.loads(dvc(["status", "--json"], p, env).stdout) == {}


# --- Kaggle upload ------------------------------------------------------------------------------


def submit(repro, fake, *args):
    env = dict(repro["env"], **fake.env())
    return run_cli(["submit", "--timeout", "30", *args], repro["project"], env=env)


def test_submit_uploads_and_prints_the_log_loss_score(repro):
    from fake_kaggle import FakeKaggle, log_loss

    with FakeKaggle() as fake:
        result = submit(repro, fake)
        assert result.returncode == 0, result.stderr
        sub = fake.submissions[-1]
        expected = log_loss(fake.truth(), (repro["project"] / "data/submission.csv").read_bytes())
    assert f"public score (log loss): {expected:.5f}" in result.stdout
    # The default message traces the run: git revision and the params that differ from the defaults.
    assert sub["description"].startswith("dogs-vs-cats git ")
    assert "split.n_train=100" in sub["description"] and "train.epochs=2" in sub["description"]


def test_submit_refuses_a_malformed_file_and_sends_nothing(repro, tmp_path):
    from fake_kaggle import FakeKaggle

    bad = tmp_path / "bad.csv"
    rows = (repro["project"] / "data/submission.csv").read_text().splitlines()
    bad.write_text("\n".join(rows[:-1]) + "\n")  # one id short
    with FakeKaggle() as fake:
        result = submit(repro, fake, "--file", str(bad))
        assert fake.requests == []
    assert result.returncode == 1 and "has 499 rows, sample_submission.csv has 500" in result.stderr


@pytest.mark.parametrize(
    "fault, words",
    [
        ({"reject_upload": True}, "storage refused the upload; nothing was submitted"),
        ({"status": 401}, "rejected the credentials (401)"),
        ({"status": 403}, "accept the competition rules"),
        ({"status": 404}, "has no competition"),
        ({"score_error": True}, "Kaggle could not score"),
    ],
)
def test_submit_failures_are_one_clear_line(repro, fault, words):
    from fake_kaggle import FakeKaggle

    with FakeKaggle() as fake:
        fake.fault.update(fault)
        result = submit(repro, fake)
    assert result.returncode == 1
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_credentials_never_reach_outputs_logs_or_descriptions(repro):
    from fake_kaggle import KEY, TOKEN, FakeKaggle

    with FakeKaggle() as fake:
        result = submit(repro, fake)
        env = dict(repro["env"], **fake.env(token=True))
        with_token = run_cli(["submit", "--timeout", "30"], repro["project"], env=env)
        assert with_token.returncode == 0, with_token.stderr
        descriptions = [s["description"] for s in fake.submissions]
    texts = [repro["first"].stdout, repro["first"].stderr, result.stdout, result.stderr, *descriptions]
    texts += [with_token.stdout, with_token.stderr]
    assert all(KEY not in t and TOKEN not in t for t in texts)
    # Everything the runs wrote (the fake server's own source, which defines the secrets, aside).
    for path in repro["project"].rglob("*"):
        if path.is_file() and not {".git", "tests", "bench"} & set(path.parts) and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            assert KEY.encode() not in data and TOKEN.encode() not in data, path


# --- The DVC workflow: experiments, diffs, remotes (these commit in the shared project: keep them last) ---


def git(project, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_experiment_then_metrics_params_and_plots_diff_between_commits(repro, tmp_path):
    p, env = repro["project"], repro["env"]
    git(p, "add", "-A")
    git(p, "commit", "-qm", "baseline run")
    base = git(p, "rev-parse", "HEAD").strip()

    run = dvc(
        [
            "exp",
            "run",
            "-n",
            "v10",
            "-S",
            "train.epochs=1",
            "-S",
            "train.warmup_epochs=0",
            "-S",
            "train.model=squeezenet1_0",
            "-S",
            "train.batch_norm=false",
            "-S",
            "train.bypass=false",
            "-S",
            "train.low_res_size=0",
        ],
        p,
        env,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    shown = dvc(["exp", "show", "--csv"], p, env)
    assert shown.returncode == 0
    header, *rows = list(csv.reader(shown.stdout.splitlines()))
    assert {"holdout.accuracy", "holdout.log_loss", "train.model", "train.epochs"} <= set(header)
    exp_row = next(r for r in rows if "v10" in r)
    assert exp_row[header.index("train.model")] == "squeezenet1_0"
    assert int(exp_row[header.index("metrics/int8.json:bytes")]) > 0  # the experiment ran the export stage too

    assert dvc(["exp", "apply", "v10"], p, env).returncode == 0
    git(p, "add", "-A")
    git(p, "commit", "-qm", "v1.0 experiment")
    metrics = dvc(["metrics", "diff", base, "HEAD", "--all", "--json"], p, env)
    changed = json.loads(metrics.stdout)
    assert "holdout.accuracy" in changed["metrics/eval.json"] and "bytes" in changed["metrics/int8.json"]
    assert json.loads((p / "metrics/members/42/train.json").read_text())["params"] == 736_450  # the demo's net, exactly
    params = json.loads(dvc(["params", "diff", base, "HEAD", "--json"], p, env).stdout)["params.yaml"]
    assert params["train.model"] == {"old": "squeezenet1_1", "new": "squeezenet1_0"}
    assert (params["train.bypass"]["old"], params["train.bypass"]["new"]) == (True, False)

    out = tmp_path / "diff_html"
    plots = dvc(["plots", "diff", base, "HEAD", "-o", str(out)], p, env)
    assert plots.returncode == 0, plots.stderr
    html = (out / "index.html").read_text()
    assert base in html and "Holdout ROC curve" in html and "Accuracy per epoch" in html
    screenshot_renders(out / "index.html", tmp_path / "plots_diff.png")


def screenshot_renders(page, png):
    """Headless Chromium opens the page and the screenshot is not blank: the plots really render."""
    import re
    import shutil

    import numpy as np
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed for this check: apt-get install chromium (.ci/run does)"
    # The page as DVC wrote it, through .dvc/plots/offline.html: nothing to fetch, so it renders offline.
    html = page.read_text()
    assert "vegaEmbed" in html and not re.search(r"""<script[^>]+src=|<link[^>]+href=["']?https?:""", html)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--proxy-server=127.0.0.1:9",  # no network, as on a laptop offline
            "--proxy-bypass-list=<-loopback>",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={png.parent / 'chromium-profile'}",
            "--window-size=1400,2400",
            "--virtual-time-budget=15000",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    # Vega draws axes, lines and labels: a rendered page has many non-white pixels.
    assert (pixels < 200).mean() > 0.005, "the plots page rendered blank"
    if os.environ.get("PLOTS_SCREENSHOT"):  # keep a copy to look at: PLOTS_SCREENSHOT=/tmp/plots.png
        shutil.copy(png, os.environ["PLOTS_SCREENSHOT"])


def test_push_then_pull_restores_every_output(repro):
    import shutil

    p, env = repro["project"], repro["env"]
    pushed = dvc(["push"], p, env)
    assert pushed.returncode == 0, pushed.stderr
    outputs = [
        "data/raw",
        "data/split",
        "data/prepared",
        "data/members/42/teacher",
        "data/members/42/model",
        "data/model",
    ]
    outputs += ["data/submission.csv", "data/export"]
    before = {
        o: (p / o).stat().st_size if (p / o).is_file() else sorted(f.name for f in (p / o).iterdir()) for o in outputs
    }
    for o in outputs:
        shutil.rmtree(p / o) if (p / o).is_dir() else (p / o).unlink()
    shutil.rmtree(p / ".dvc/cache")
    assert "deleted" in dvc(["status"], p, env).stdout
    pulled = dvc(["pull"], p, env)
    assert pulled.returncode == 0, pulled.stderr
    after = {
        o: (p / o).stat().st_size if (p / o).is_file() else sorted(f.name for f in (p / o).iterdir()) for o in outputs
    }
    assert after == before
    assert "Data and pipelines are up to date" in dvc(["status"], p, env).stdout


def test_s3_remote_round_trip_through_a_local_s3_server(repro, tmp_path):
    """The team set-up from the README, against moto's S3 server on 127.0.0.1."""
    import shutil
    import time

    import boto3  # moto[server] of the test extra brings it

    (port,) = free_ports()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client(
                    "s3",
                    endpoint_url=endpoint,
                    **{k.lower(): v for k, v in creds.items() if k != "AWS_DEFAULT_REGION"},
                    region_name="us-east-1",
                ).create_bucket(Bucket="team")
                break
            except Exception:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        p = repro["project"]
        # Talk to the S3 server directly, not through the fake Kaggle's proxy settings.
        env = {k: v for k, v in repro["env"].items() if k.lower() != "http_proxy"}
        env.update(creds)
        assert dvc(["remote", "add", "team", "s3://team/dogs-vs-cats"], p, env).returncode == 0
        assert dvc(["remote", "modify", "team", "endpointurl", endpoint], p, env).returncode == 0
        pushed = dvc(["push", "-r", "team", "data/model"], p, env)
        assert pushed.returncode == 0, pushed.stderr
        listed = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).list_objects_v2(Bucket="team")
        assert listed.get("KeyCount", 0) >= 1
        original = (p / "data/model/model.keras").read_bytes()
        shutil.rmtree(p / "data/model")
        shutil.rmtree(p / ".dvc/cache")
        pulled = dvc(["pull", "-r", "team", "data/model"], p, env)
        assert pulled.returncode == 0, pulled.stderr
        assert (p / "data/model/model.keras").read_bytes() == original
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_offline_plots_template_is_the_vega_that_dvc_render_asks_for():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plots_template", ROOT / ".ci/plots_template.py")
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    import dvc_render.vega

    source = open(dvc_render.vega.__file__).read()
    for name, version in template.LIBRARIES:  # the versions dvc-render's own page loads from its CDN
        assert f"https://cdn.jsdelivr.net/npm/{name}@{version}" in source
    assert template.TEMPLATE.read_text(encoding="utf8") == template.page()
