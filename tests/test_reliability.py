"""Faults for real: a training run killed mid-way, and two `dvc repro` at once."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time

import pytest

from harness import (
    BIN,
    copy_project,
    free_ports,
    image_bytes,
    make_competition,
    project_env,
    run_cli,
    set_params,
    tiny_project,
    train_workers,
)

pytestmark = pytest.mark.slow  # trains for real, kills and races real processes


@pytest.fixture
def tiny(tmp_path):
    """A project copy on a tiny generated competition, prepared and ready to train."""
    settings = {"train.epochs": 5, "train.validation_freq": 3, "train.ema": 0.9}
    return tiny_project(tmp_path, 4, ("download", "split", "prepare"), **settings)


def test_training_killed_mid_way_resumes_from_its_last_checkpoint(tiny):
    state = tiny / "data/train_state/42/state.json"
    proc = subprocess.Popen(
        [str(BIN / "dogs-vs-cats"), "train"],
        cwd=tiny,
        env=project_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            if json.loads(state.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at, spent = (json.loads(state.read_text())[k] for k in ("epoch", "wall_s"))
    assert 2 <= killed_at < 5 and spent > 0
    assert (tiny / "data/train_state/42/average.npz").is_file()  # the weight average is checkpointed with the net
    assert not (tiny / "data/members/42/teacher/model.keras").exists()  # no half-finished model for DVC to accept

    result = run_cli(["train"], tiny)
    assert result.returncode == 0, result.stderr
    assert f"resuming after epoch {killed_at}" in result.stderr and "starting afresh" not in result.stderr
    rows = list(csv.DictReader(open(tiny / "metrics/members/42/train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 6))
    # Validated every 3rd epoch and after the last, across the kill: epochs 3 and 5.
    assert [int(r["epoch"]) for r in csv.DictReader(open(tiny / "metrics/members/42/val_log.csv"))] == [3, 5]
    assert all(float(r["train_s"]) > 0 for r in rows)
    report = json.loads((tiny / "metrics/members/42/train.json").read_text())
    assert report["epochs"] == 5
    # Its cost counts the time before the kill too, not only the resumed epochs'.
    assert report["wall_s"] >= spent + sum(float(r["train_s"]) for r in rows[killed_at:])
    assert (tiny / "data/members/42/teacher/model.keras").stat().st_size > 100_000
    assert not (tiny / "data/train_state/42").exists()


def test_a_checkpoint_from_other_params_is_not_resumed(tiny):
    set_params(tiny, **{"train.epochs": 2})
    (tiny / "data/train_state/42").mkdir(parents=True)
    (tiny / "data/train_state/42/state.json").write_text(
        json.dumps({"fingerprint": "other", "epoch": 1, "history": []})
    )
    (tiny / "data/train_state/42/last.keras").write_bytes(b"stale")
    result = run_cli(["train"], tiny)
    assert result.returncode == 0 and "from other params or data; starting afresh" in result.stderr
    assert [int(r["epoch"]) for r in csv.DictReader(open(tiny / "metrics/members/42/train_log.csv"))] == [1, 2]


def test_two_repros_at_once_the_second_fails_on_the_lock_and_the_first_finishes(tiny, tmp_path):
    set_params(tiny, **{"train.epochs": 2})
    env = project_env()
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        # Up to train only: the lock is what is tested, and evaluate/submission/export add a minute.
        first = subprocess.Popen(
            [str(BIN / "dvc"), "repro", "train"], cwd=tiny, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while "Running stage 'train@42'" not in log.read_text():
            assert time.monotonic() < deadline and first.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        second = subprocess.run(
            [str(BIN / "dvc"), "repro"], cwd=tiny, env=env, capture_output=True, text=True, timeout=300
        )
        first.wait(timeout=600)
    assert first.returncode == 0, log.read_text()[-2000:]
    assert second.returncode != 0
    # DVC refuses with its read/write lock ("... is busy ... rwlock"), touching nothing.
    assert "rwlock" in (second.stdout + second.stderr).lower()
    status = subprocess.run([str(BIN / "dvc"), "status", "train"], cwd=tiny, env=env, capture_output=True, text=True)
    assert "Data and pipelines are up to date" in status.stdout


def test_mirrored_strategy_trains_and_an_undecodable_test_image_still_gets_its_row(tmp_path):
    comp = make_competition(tmp_path / "comp", n_per_class=20, n_test=4, extra_test={"77.jpg": b"\xff\xd8 not a jpeg"})
    project = copy_project(tmp_path / "project")
    set_params(
        project,
        **{
            "data.source": str(comp),
            "split.n_train": 20,
            "split.n_val": 10,
            "split.n_holdout": 10,
            "prepare.image_size": 32,
            "train.epochs": 1,
            "train.warmup_epochs": 0,
            "train.batch_size": 8,
            "train.strategy": "mirrored",
            "train.low_res_size": 0,
        },
    )
    for stage in ("download", "split", "prepare", "train", "student", "ensemble", "submission"):
        result = run_cli([stage], project)
        assert result.returncode == 0, result.stderr
        if stage == "train":
            assert "strategy mirrored (1 replica(s))" in result.stderr
    assert "1 test image(s) undecodable, given p = 0.5: [77]" in result.stderr
    rows = dict(r for r in csv.reader(open(project / "data/submission.csv")))
    assert rows.pop("id") == "label" and sorted(map(int, rows)) == [1, 2, 3, 4, 77]
    assert rows["77"] == "0.500000"
    assert json.loads((project / "metrics/members/42/train.json").read_text())["train_images_per_s"] > 0


def test_multi_worker_without_tf_config_is_a_clear_error(tiny):
    set_params(tiny, **{"train.strategy": "multi_worker"})
    result = run_cli(["train"], tiny)
    assert result.returncode == 1
    assert "train.strategy = multi_worker needs the TF_CONFIG environment variable" in result.stderr


def test_progressive_resizing_with_mixup_trains_small_then_ships_at_full_size(tiny):
    import keras

    import dogs_vs_cats.layers  # noqa: F401  (registers the model's layers for loading)

    set_params(
        tiny,
        **{
            "prepare.image_size": 40,
            "train.low_res_size": 32,
            "train.low_res_epochs": 2,
            "train.epochs": 4,
            "train.augment.mixup": 0.2,
        },
    )
    assert run_cli(["prepare"], tiny).returncode == 0
    result = run_cli(["train"], tiny)
    assert result.returncode == 0, result.stderr
    assert "4 epochs (to 2 at 32px, to 4 at 40px)" in result.stderr
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(tiny / "metrics/members/42/train_log.csv"))]
    assert epochs == [1, 2, 3, 4]
    model = keras.models.load_model(tiny / "data/members/42/teacher/model.keras")
    assert model.input_shape == (None, 40, 40, 3)


def test_progressive_resizing_needs_a_smaller_size_and_fewer_epochs(tiny):
    set_params(tiny, **{"train.low_res_size": 32, "train.low_res_epochs": 2})
    result = run_cli(["train"], tiny)
    assert result.returncode == 1
    assert "train.low_res_size = 32 is invalid: expected 0 (off) or less than prepare.image_size (32)" in result.stderr
    set_params(tiny, **{"prepare.image_size": 40, "train.low_res_size": 32, "train.low_res_epochs": 5})
    result = run_cli(["train"], tiny)
    assert "train.low_res_epochs = 5 is invalid: expected fewer than train.epochs (5)" in result.stderr


def test_multi_worker_trains_two_workers_in_step_from_tf_config(tiny, tmp_path):
    """Two workers on localhost, each in its own checkout as on two machines: one model, trained together,
    though one stalls for twice TensorFlow's default heartbeat timeout, as on a busy machine."""
    import shutil

    import keras
    import numpy as np

    import dogs_vs_cats.layers  # noqa: F401  (registers the model's layers for loading)

    set_params(tiny, **{"train.strategy": "multi_worker", "train.epochs": 3})
    second = shutil.copytree(tiny, tmp_path / "machine2", symlinks=True)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    results = train_workers((tiny, second), cluster, pause=(1, 20))
    errs = [err for _, err in results]
    assert [code for code, _ in results] == [0, 0], "\n---\n".join(err[-3000:] for err in errs)
    assert all("strategy multi_worker (2 replica(s))" in e and "Epoch 3/3" in e for e in errs)
    nets = [keras.models.load_model(folder / "data/members/42/teacher/model.keras") for folder in (tiny, second)]
    for a, b in zip(*(net.get_weights() for net in nets)):
        np.testing.assert_array_equal(a, b)  # gradients and batch-norm statistics were averaged over both workers
    rows = list(csv.DictReader(open(tiny / "metrics/members/42/train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert float(rows[0]["loss"]) > 0
    assert [int(r["epoch"]) for r in csv.DictReader(open(tiny / "metrics/members/42/val_log.csv"))] == [
        3
    ]  # validated after the last
    assert json.loads((tiny / "metrics/members/42/train.json").read_text())["epochs"] == 3


def test_multi_worker_loop_on_one_worker_trains_as_fit_does(tiny, tmp_path):
    """The multi-worker training loop is fit()'s recipe: same loss, schedule, statistics and logs."""
    import shutil

    set_params(tiny, **{"train.ema": 0.0, "train.dropout": 0.0})
    with_fit = shutil.copytree(tiny, tmp_path / "with_fit", symlinks=True)
    set_params(tiny, **{"train.strategy": "multi_worker"})
    one_worker = {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
    results = [
        run_cli(["train"], tiny, env=project_env({"TF_CONFIG": json.dumps(one_worker)})),
        run_cli(["train"], with_fit),
    ]
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    assert "strategy multi_worker (1 replica(s))" in results[0].stderr
    logs = [list(csv.DictReader(open(folder / "metrics/members/42/train_log.csv"))) for folder in (tiny, with_fit)]
    for ours, keras_fit in zip(*logs):
        assert ours["learning_rate"] == keras_fit["learning_rate"]
        for key in ("loss", "log_loss", "accuracy"):
            assert float(ours[key]) == pytest.approx(float(keras_fit[key]), abs=2e-3), (key, ours, keras_fit)
    assert float(logs[0][0]["loss"]) != pytest.approx(float(logs[0][-1]["loss"]), abs=1e-3)  # it trained
    vals = [next(csv.DictReader(open(folder / "metrics/members/42/val_log.csv"))) for folder in (tiny, with_fit)]
    assert float(vals[0]["val_log_loss"]) == pytest.approx(float(vals[1]["val_log_loss"]), abs=2e-3)


def test_a_short_training_tells_the_synthetic_cats_from_dogs(tmp_path):
    """A dead head, a broken label mapping or a broken input pipeline would all stay near 0.5 here."""
    comp = make_competition(tmp_path / "comp", n_per_class=60, n_test=4)
    project = copy_project(tmp_path / "project")
    set_params(
        project,
        **{
            "data.source": str(comp),
            "split.n_train": 80,
            "split.n_val": 20,
            "split.n_holdout": 20,
            "prepare.image_size": 32,
            "train.epochs": 10,
            "train.warmup_epochs": 1,
            "train.batch_size": 8,
            "train.low_res_size": 0,
        },
    )
    for stage in ("download", "split", "prepare", "train", "student", "ensemble", "evaluate"):
        result = run_cli([stage], project)
        assert result.returncode == 0, result.stderr
    ev = json.loads((project / "metrics/eval.json").read_text())
    # Measured: 1.0 / log loss 0.0 on three training seeds (42, 7, 1). After only 30 steps instead
    # of 100, batch norm's moving statistics had not settled: AUC 1.0 but accuracy 0.5.
    for key in ("val", "holdout"):
        assert ev[key]["accuracy"] >= 0.9 and ev[key]["log_loss"] < 0.3, ev
    assert ev["holdout"]["roc_auc"] >= 0.97, ev


# --- One decode's memory, whatever the photo's mode (images.decode_bytes) --------------------------

_PEAK_CHILD = """
import re, sys
from dogs_vs_cats.images import load_image
def status(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
load_image(open(sys.argv[2], "rb").read(), 64)  # warm: Pillow's and numpy's first allocations
data = open(sys.argv[1], "rb").read()
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the memory in use now
before = status("VmRSS")
load_image(data, 128, max_decode_bytes=1 << 40)
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "1", "RGBA", "LA", "P+transparency", "CMYK", "I;16", "I", "F"])
def test_one_decode_stays_within_the_memory_its_mode_is_budgeted(tmp_path, mode):
    import io

    import numpy as np
    from PIL import Image

    from dogs_vs_cats.images import decode_bytes

    budget = 48 << 20
    pil_mode = "P" if mode.startswith("P") else mode
    transparent = mode == "P+transparency"
    side = int((budget / decode_bytes(pil_mode, 1, 1, transparent)) ** 0.5)  # the largest square the budget allows
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.int32))
    elif mode == "F":
        img = Image.fromarray(rng.random((side, side), dtype=np.float32) * 255)
    else:
        img = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).convert(pil_mode)
    assert img.mode == pil_mode
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("CMYK", "I", "F") else "PNG", **({"transparency": 0} if transparent else {}))
    (tmp_path / "photo").write_bytes(buf.getvalue())
    (tmp_path / "small").write_bytes(image_bytes())
    out = subprocess.run(
        [str(BIN / "python"), "-c", _PEAK_CHILD, str(tmp_path / "photo"), str(tmp_path / "small")],
        capture_output=True,
        text=True,
        env=project_env(),
        check=True,
    )
    peak = int(out.stdout.split()[-1])
    need = decode_bytes(pil_mode, side, side, transparent)
    assert need <= budget and peak <= need, f"{mode}: {peak:,} bytes at the peak, {need:,} budgeted"
    assert peak > need / 4  # the measurement saw the decode at all


# --- Hostile archives (download.check_archive) ------------------------------------------------------


def _local_download(tmp_path, source):
    project = copy_project(tmp_path / "project")
    set_params(project, **{"data.source": str(source)})
    start = time.monotonic()
    result = run_cli(["download"], project)
    return project, result, time.monotonic() - start


def test_a_member_claiming_4_gb_is_refused_in_seconds_before_anything_is_inflated(tmp_path):
    import zipfile

    bundle = tmp_path / "competition.zip"
    with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("train.zip", "w", force_zip64=True) as w:  # 4 GiB of zeros, 18 MB deflated
            zeros = bytes(64 << 20)
            for _ in range(64):
                w.write(zeros)
        zf.writestr("test.zip", b"")
        zf.writestr("sample_submission.csv", "id,label\n")
    project, result, seconds = _local_download(tmp_path, bundle)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "train.zip claims 4,294,967,296 bytes inflated" in errors[0] and seconds < 5
    assert not (project / "data/raw").exists() and not (project / "data/raw.tmp").exists()


@pytest.mark.parametrize(
    "member, words",
    [
        ("../../escape.jpg", "would land outside its folder"),
        ("/etc/cron.d/x.jpg", "would land outside its folder"),
        ("train/cat.999.jpg", "over the 67,108,864-byte limit for one member"),
    ],
)
def test_a_photo_archive_with_a_hostile_member_is_refused_in_one_line(tmp_path, member, words):
    import zipfile

    comp = make_competition(tmp_path / "comp", n_per_class=2, n_test=2)
    with zipfile.ZipFile(comp / "train.zip", "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, bytes(65 << 20) if "limit" in words else b"x")
    project, result, _ = _local_download(tmp_path, comp)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and words in errors[0], result.stderr
    assert not (project / "data/raw").exists()


def test_a_full_disk_while_unpacking_gives_one_line_and_installs_nothing(tmp_path):
    import os

    from harness import SHARED_COMPETITION

    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and subprocess.run(sudo + ["true"], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root or passwordless sudo (CI runs as root)")
    project = copy_project(tmp_path / "project")
    set_params(project, **{"data.source": str(SHARED_COMPETITION)})
    data = project / "data"
    data.mkdir(exist_ok=True)
    subprocess.run(sudo + ["mount", "-t", "tmpfs", "-o", "size=20m,mode=1777", "tmpfs", str(data)], check=True)
    try:
        result = run_cli(["download"], project)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1, result.stderr
        assert "no space left on the device" in errors[0] and "nothing was installed" in errors[0]
        assert not (data / "raw").exists() and not (data / "raw.tmp").exists()
    finally:
        subprocess.run(sudo + ["umount", str(data)], check=True)


def _kill_when(cmd: list[str], cwd, ready, timeout: float = 300) -> None:
    """Run `dogs-vs-cats CMD` in `cwd` and SIGKILL it as soon as `ready()` is true."""
    proc = subprocess.Popen(
        [str(BIN / "dogs-vs-cats"), *cmd], cwd=cwd, env=project_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, f"{cmd} ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_prepare_killed_mid_way_leaves_no_store_and_the_next_run_writes_the_same_bytes(tmp_path):
    import hashlib

    project = tiny_project(tmp_path, 40, ("download", "split"), **{"prepare.workers": 1})
    prepared = project / "data/prepared"

    def digests():
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in prepared.glob("*.tfrecord")}

    _kill_when(["prepare"], project, lambda: (prepared / "train.tfrecord").exists())  # the first store is done
    assert not (prepared / "test.tfrecord").exists()  # the last store never half-written under its name
    assert run_cli(["prepare"], project).returncode == 0
    after_kill = digests()
    assert run_cli(["prepare"], project).returncode == 0
    assert after_kill == digests() and len(after_kill) == 4


def _checkpointed(state, epoch: int) -> bool:
    """Whether the run's checkpoint file says it has finished `epoch` epochs."""
    try:
        return json.loads(state.read_text())["epoch"] >= epoch
    except (OSError, ValueError):
        return False


def test_student_killed_mid_way_resumes_from_its_last_checkpoint(tmp_path):
    settings = {"train.epochs": 4, "unlabelled.enabled": True, "unlabelled.threshold": 0.5}
    settings |= {"unlabelled.epochs": 5, "unlabelled.ratio": 2, "train.validation_freq": 5}
    project = tiny_project(tmp_path, 16, ("download", "split", "prepare", "train"), **settings)
    state = project / "data/student_state/42/state.json"
    _kill_when(["student"], project, lambda: _checkpointed(state, 2))
    killed_at = json.loads(state.read_text())["epoch"]
    assert not (project / "data/members/42/model/model.keras").exists()
    result = run_cli(["student"], project)
    assert result.returncode == 0, result.stderr
    assert f"resuming after epoch {killed_at}" in result.stderr
    assert json.loads((project / "metrics/members/42/student.json").read_text())["epochs"] == 5
    assert not (project / "data/student_state/42").exists()


def test_distillation_killed_mid_way_resumes_and_learns_from_the_test_photos_when_asked(tmp_path):
    settings = {"train.epochs": 2, "ensemble.seeds": [42, 7], "train.validation_freq": 5}
    stages = ("download", "split", "prepare", "train", "student", "ensemble")
    project = tiny_project(tmp_path, 16, stages, **settings)
    set_params(project, **{"edge.distil": True, "edge.epochs": 5, "edge.test_photos": True})
    state = project / "data/edge_state/state.json"
    _kill_when(["edge"], project, lambda: _checkpointed(state, 2))
    killed_at = json.loads(state.read_text())["epoch"]
    assert not (project / "data/edge/model.keras").exists()
    result = run_cli(["edge"], project)
    assert result.returncode == 0, result.stderr
    assert f"resuming after epoch {killed_at}" in result.stderr
    assert "on the training photos and 16 test photos" in result.stderr
    report = json.loads((project / "metrics/edge.json").read_text())
    assert (report["distilled"], report["epochs"], report["test_photos"]) == (True, 5, 16)
    assert not (project / "data/edge_state").exists()
