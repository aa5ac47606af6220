"""The download stage against the fake Kaggle server, driven by the real `kaggle` client."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from fake_kaggle import KEY, USERNAME
from harness import BIN, SHARED_COMPETITION, project_env, run_cli

pytestmark = pytest.mark.slow  # the real kaggle client moving the real archives

EXPECTED = {"train.zip", "test.zip", "sample_submission.csv"}


@pytest.fixture
def project(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "params.yaml").write_text("data: {source: kaggle}\n")
    return tmp_path


def download(project, fake, token=False, extra=None, creds=True):
    env = fake.env(token=token)
    if not creds:
        env = {k: v for k, v in env.items() if not k.startswith("KAGGLE_") or k == "KAGGLE_API_ENVIRONMENT"}
    env.update(extra or {})
    return run_cli(["download"], project, env=project_env(env, home=project / "home"))


def assert_nothing_installed(project):
    assert not (project / "data/raw").exists()
    assert not (project / "data/raw.tmp").exists()


@pytest.mark.parametrize("token", [False, True], ids=["username-key", "api-token"])
def test_download_keeps_the_three_archives_as_served(project, fake_kaggle, token):
    result = download(project, fake_kaggle, token=token)
    assert result.returncode == 0, result.stderr
    raw = project / "data/raw"
    assert {p.name for p in raw.iterdir()} == EXPECTED
    for name in EXPECTED:
        assert (raw / name).read_bytes() == (SHARED_COMPETITION / name).read_bytes()
    assert not (project / "data/.download").exists()


def test_credentials_from_kaggle_json(project, fake_kaggle):
    (project / "home/.kaggle").mkdir()
    (project / "home/.kaggle/kaggle.json").write_text(json.dumps({"username": USERNAME, "key": KEY}))
    result = download(project, fake_kaggle, creds=False)
    assert result.returncode == 0, result.stderr


def test_no_credentials_is_one_clear_line(project, fake_kaggle):
    result = download(project, fake_kaggle, creds=False)
    assert result.returncode == 1
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert lines == [lines[0]] and "no Kaggle credentials: set KAGGLE_API_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert_nothing_installed(project)


def test_bad_credentials_401(project, fake_kaggle):
    result = download(project, fake_kaggle, extra={"KAGGLE_KEY": "wrong"})
    assert result.returncode == 1
    assert "error: Kaggle rejected the credentials (401)" in result.stderr
    assert "wrong" not in result.stderr + result.stdout  # the key is never echoed
    assert_nothing_installed(project)


@pytest.mark.parametrize(
    "status, message",
    [
        (
            403,
            "accept the competition rules at https://www.kaggle.com/competitions/dogs-vs-cats-redux-kernels-edition/rules",
        ),
        (404, "Kaggle has no competition 'dogs-vs-cats-redux-kernels-edition' (404): check data.competition"),
    ],
)
def test_refusals_name_the_fix(project, fake_kaggle, status, message):
    fake_kaggle.fault["status"] = status
    result = download(project, fake_kaggle)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert_nothing_installed(project)


def test_unknown_competition_is_a_404(project, fake_kaggle):
    (project / "params.yaml").write_text("data: {source: kaggle, competition: no-such-thing}\n")
    result = download(project, fake_kaggle)
    assert result.returncode == 1 and "Kaggle has no competition 'no-such-thing' (404)" in result.stderr


def test_a_download_killed_midway_leaves_no_archive_and_resumes_next_time(project, fake_kaggle):
    fake_kaggle.fault["stall_at"] = 5 << 20
    env = project_env(fake_kaggle.env(), home=project / "home")
    proc = subprocess.Popen(
        [str(BIN / "dogs-vs-cats"), "download"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    partial = project / "data/.download/dogs-vs-cats-redux-kernels-edition.zip"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 5 << 20):
        assert time.monotonic() < deadline and proc.poll() is None, "download never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_nothing_installed(project)
    fake_kaggle.requests.clear()
    result = download(project, fake_kaggle)
    assert result.returncode == 0, result.stderr
    assert f"GET /files/dogs-vs-cats-redux-kernels-edition.zip bytes={5 << 20}-" in fake_kaggle.requests
    assert (project / "data/raw/train.zip").read_bytes() == (SHARED_COMPETITION / "train.zip").read_bytes()


def test_a_connection_that_keeps_dropping_fails_cleanly(project, fake_kaggle):
    # Every connection dies after 1 MB, more often than the client retries.
    fake_kaggle.fault.update(truncate_at=1 << 20, truncate_times=50)
    (project / "params.yaml").write_text("data: {source: kaggle, retries: 1}\n")
    result = download(project, fake_kaggle)
    assert result.returncode == 1
    assert "run again to resume" in result.stderr and "Traceback" not in result.stderr
    assert_nothing_installed(project)
    # data.retries = 1: the first request, then exactly one retry resuming where the first was cut.
    gets = [r for r in fake_kaggle.requests if r.startswith("GET /files/")]
    assert len(gets) == 2 and gets[1].endswith(f"bytes={1 << 20}-"), gets


def test_a_short_body_is_retried_not_accepted(project, fake_kaggle):
    fake_kaggle.fault["short_body"] = True
    result = download(project, fake_kaggle)
    assert result.returncode == 0, result.stderr
    assert (project / "data/raw/train.zip").read_bytes() == (SHARED_COMPETITION / "train.zip").read_bytes()
    assert sum(r.startswith("GET ") for r in fake_kaggle.requests) >= 2


def test_a_corrupt_bundle_is_refused_and_discarded(project, fake_kaggle):
    good = fake_kaggle.bundle()
    fake_kaggle._bundle = good[:1000] + bytes(200) + good[1200:]  # same size, damaged bytes
    result = download(project, fake_kaggle)
    assert result.returncode == 1
    assert "is corrupt" in result.stderr or "not a complete zip" in result.stderr
    assert_nothing_installed(project)
    assert not (project / "data/.download/dogs-vs-cats-redux-kernels-edition.zip").exists()


def test_local_source_folder_and_bundle(project, fake_kaggle, tmp_path):
    (project / "params.yaml").write_text(f"data: {{source: {SHARED_COMPETITION}}}\n")
    assert run_cli(["download"], project).returncode == 0
    assert {p.name for p in (project / "data/raw").iterdir()} == EXPECTED
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(fake_kaggle.bundle())
    (project / "params.yaml").write_text(f"data: {{source: {bundle}}}\n")
    assert run_cli(["download"], project).returncode == 0
    assert (project / "data/raw/test.zip").read_bytes() == (SHARED_COMPETITION / "test.zip").read_bytes()
    (project / "params.yaml").write_text(f"data: {{source: {tmp_path / 'missing.zip'}}}\n")
    result = run_cli(["download"], project)
    assert result.returncode == 1 and "missing.zip: no such file or folder" in result.stderr


def test_a_hung_server_times_out_with_a_clear_line(project, fake_kaggle):
    fake_kaggle.fault["hang_s"] = 30
    waited = {}
    for timeout in (1, 4):
        (project / "params.yaml").write_text(f"data: {{source: kaggle, retries: 0, timeout_s: {timeout}}}\n")
        start = time.monotonic()
        result = download(project, fake_kaggle)
        waited[timeout] = time.monotonic() - start
        assert result.returncode == 1 and waited[timeout] < 30
        assert "failed" in result.stderr and "run again to resume" in result.stderr
        assert_nothing_installed(project)
    # The same start-up either way: what differs is the wait, and it is data.timeout_s's difference.
    assert 2 <= waited[4] - waited[1] <= 4.5, waited


def test_a_full_disk_fails_cleanly_and_the_next_run_succeeds(project, fake_kaggle):
    import os

    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and subprocess.run(sudo + ["true"], capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root or passwordless sudo (CI runs as root)")
    (project / "params.yaml").write_text("data: {source: kaggle, retries: 0}\n")
    data = project / "data"
    data.mkdir()
    subprocess.run(sudo + ["mount", "-t", "tmpfs", "-o", "size=20m,mode=1777", "tmpfs", str(data)], check=True)
    try:
        result = download(project, fake_kaggle)
        assert result.returncode == 1
        errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and "no space left on the device" in errors[0], result.stderr
        assert not (data / "raw").exists()
    finally:
        subprocess.run(sudo + ["umount", str(data)], check=True)
    result = download(project, fake_kaggle)
    assert result.returncode == 0, result.stderr
    assert (project / "data/raw/train.zip").read_bytes() == (SHARED_COMPETITION / "train.zip").read_bytes()
