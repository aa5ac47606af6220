"""`dogs-vs-cats submit`: check the submission, upload it with the kaggle client, wait for the score.

The file is checked exactly as the submission stage checks it before anything is
sent, so a malformed file never costs one of the day's submissions. The default
description records the git revision and the params that differ from the defaults,
so a leaderboard entry can be traced back to the run that made it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from ..common import UserError, log
from ..kaggle_client import explain_http_error, kaggle_api
from ..params import Params, as_dict
from ..paths import RAW
from ..submission_file import check

UPLOAD_FAILED = "Could not submit to competition"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def default_message(params: Params) -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    ours, defaults = _flatten(as_dict(params)), _flatten(as_dict(Params()))
    # data.source may be a local path; it says nothing about the model, so leave it out.
    changed = [f"{k}={v}" for k, v in ours.items() if v != defaults[k] and not k.startswith("data.")]
    parts = [f"git {rev or 'unknown'}{'+dirty' if dirty else ''}", "params: " + (", ".join(changed) or "defaults")]
    return "dogs-vs-cats " + "; ".join(parts)


def _call(fn, competition):
    try:
        return fn()
    except UserError:
        raise
    except Exception as exc:
        explained = explain_http_error(exc, competition)
        if explained is not None:
            raise explained from None
        raise UserError(f"talking to Kaggle failed ({type(exc).__name__}: {exc}); try again") from None


def run(params: Params, *, file: str, message: str | None, timeout_s: float, params_path: str = "params.yaml") -> None:
    path = Path(file)
    competition = params.data.competition
    rows = check(path, RAW / "sample_submission.csv")
    message = message if message is not None else default_message(params)
    api = kaggle_api()
    log(f"submit: uploading {path} ({rows} rows) to '{competition}': {message}")
    result = _call(lambda: api.competition_submit(str(path), message, competition, quiet=True), competition)
    if getattr(result, "message", "") == UPLOAD_FAILED:
        raise UserError(f"{path}: Kaggle's storage refused the upload; nothing was submitted, try again later")
    ref = getattr(result, "ref", None)
    log(f"submit: submitted (ref {ref}); waiting for the score (up to {timeout_s:g}s)")

    deadline = time.monotonic() + timeout_s
    delay = 1.0
    while True:
        subs = _call(lambda: api.competition_submissions(competition, page_size=20), competition) or []
        mine = next((s for s in subs if ref is not None and str(getattr(s, "ref", "")) == str(ref)), None)
        if mine is None and ref is None:
            mine = next((s for s in subs if getattr(s, "description", "") == message), None)
        status = str(getattr(mine, "status", "")).upper() if mine is not None else ""
        if status.endswith("COMPLETE"):
            print(f"public score (log loss): {mine.public_score}")
            return
        if status.endswith("ERROR"):
            why = getattr(mine, "error_description", "") or "no reason given"
            raise UserError(f"Kaggle could not score {path}: {why}; check the file and submit again")
        if time.monotonic() > deadline:
            raise UserError(
                f"no score after {timeout_s:g}s (status {status or 'unknown'}); see "
                f"https://www.kaggle.com/competitions/{competition}/submissions"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 15.0)
