"""Stage `download`: fetch the competition with the official `kaggle` client.

Kaggle serves the whole competition as one zip holding `train.zip`, `test.zip` and
`sample_submission.csv`. We keep those three files as they are (no exploding 25,000
JPEGs into the DVC cache) in `data/raw/`.

The client writes straight into its target file, so it downloads into a staging
folder outside DVC's outputs: an interrupted run leaves a partial there that the
client can resume, and `data/raw/` only ever receives checked, complete archives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
import zipfile
from pathlib import Path

from ..common import UserError, log
from ..kaggle_client import explain_http_error, kaggle_api
from ..params import Params
from ..paths import DOWNLOAD_STAGING as STAGING
from ..paths import RAW

FILES = ("train.zip", "test.zip", "sample_submission.csv")


# What an archive may hold, checked from its directory before a byte is inflated: a member
# that claims to inflate to gigabytes is refused at once. Python's zipfile never inflates past
# a member's declared size, so the directory's figures bound the work. Kaggle's full train.zip,
# the largest member of the competition zip, is well under the member cap.
BUNDLE_LIMITS = {"member": 2 << 30, "total": 4 << 30}  # the competition zip: train.zip, test.zip, the csv
PHOTO_LIMITS = {"member": 64 << 20, "total": 4 << 30}  # train.zip and test.zip: one photo a member


def check_archive(path: Path, limits: dict = PHOTO_LIMITS) -> None:
    """Refuse a truncated, corrupt or hostile zip: it must open, every member's name must stay inside
    the folder, no member may claim more than limits["member"] bytes nor all of them more than
    limits["total"], and every member's CRC must match."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            for m in members:
                parts = Path(m.filename.replace("\\", "/")).parts
                if m.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise UserError(
                        f"{path}: member {m.filename!r} would land outside its folder; refusing the archive"
                    )
                if m.file_size > limits["member"]:
                    raise UserError(
                        f"{path}: member {m.filename} claims {m.file_size:,} bytes inflated, over the "
                        f"{limits['member']:,}-byte limit for one member; this is not a competition archive"
                    )
            total = sum(m.file_size for m in members)
            if total > limits["total"]:
                raise UserError(
                    f"{path}: its members claim {total:,} bytes inflated, over the {limits['total']:,}-byte "
                    "limit; this is not a competition archive"
                )
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a complete zip archive ({exc}); delete it and download again") from None
    if bad is not None:
        raise UserError(f"{path}: member {bad} is corrupt; delete the archive and download again")


def _install(fill) -> None:
    """Let `fill(folder)` write the three files, check them, then move them into data/raw/."""
    tmp = RAW.with_name(RAW.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        for name in ("train.zip", "test.zip"):
            check_archive(tmp / name)
        shutil.rmtree(RAW, ignore_errors=True)
        os.replace(tmp, RAW)
    except OSError as exc:
        if not _disk_full(exc):
            raise
        raise UserError(
            f"no space left on the device holding {tmp}/ while unpacking "
            f"({shutil.disk_usage(tmp.parent).free >> 20} MiB free); free some space and run again: "
            f"nothing was installed in {RAW}/"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_bundle(bundle: Path, dest: Path) -> None:
    """Stream the three files out of Kaggle's competition zip (they may sit in a subfolder)."""
    check_archive(bundle, BUNDLE_LIMITS)
    with zipfile.ZipFile(bundle) as zf:
        by_base = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}
        missing = [f for f in FILES if f not in by_base]
        if missing:
            raise UserError(
                f"{bundle}: lacks {', '.join(missing)}; expected Kaggle's competition zip holding {', '.join(FILES)}"
            )
        for f in FILES:
            with zf.open(by_base[f]) as src, open(dest / f, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _from_local(source: Path) -> None:
    if not source.exists():
        raise UserError(
            f"data.source = {source}: no such file or folder; give the competition zip or the folder "
            "holding train.zip, test.zip and sample_submission.csv, or 'kaggle'"
        )
    if source.is_dir():
        missing = [f for f in FILES if not (source / f).is_file()]
        if missing:
            raise UserError(
                f"data.source = {source}: lacks {', '.join(missing)}; the folder must hold {', '.join(FILES)}"
            )
        _install(lambda dest: [shutil.copyfile(source / f, dest / f) for f in FILES])
    else:
        _install(lambda dest: _extract_bundle(source, dest))


@contextlib.contextmanager
def _stall_guard(path: Path, timeout_s: float):
    """Raise TimeoutError in the main thread when `path` stops growing for `timeout_s`.

    The client leaves socket reads without a timeout while it follows the redirect to
    the archive, so a silent server would hang the stage forever. A timer signal
    interrupts the blocked read however deep in the client it sits.
    """
    state = {"size": -1, "since": time.monotonic()}

    def tick(signum, frame):
        size = path.stat().st_size if path.exists() else 0
        now = time.monotonic()
        if size != state["size"]:
            state.update(size=size, since=now)
        elif now - state["since"] > timeout_s:
            state["since"] = now  # let a retry have its own full timeout
            raise TimeoutError(f"no data from the server for {timeout_s:g}s")

    previous = signal.signal(signal.SIGALRM, tick)
    signal.setitimer(signal.ITIMER_REAL, 0.25, 0.25)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fetch(api, competition: str, bundle: Path, retries: int, timeout_s: float) -> None:
    """`KaggleApi.competition_download_files`, with our retry count and read timeout.

    The client's own wrapper fixes 5 retries and a 300 s read timeout; a hung server
    would stall `dvc repro` for half an hour before saying anything.
    """
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

    with api.build_kaggle_client() as kaggle:
        request = ApiDownloadDataFilesRequest()
        request.competition_name = competition
        response = kaggle.competitions.competition_api_client.download_data_files(request)
        if not response.url.split("?")[0].endswith(".zip"):
            raise UserError(f"Kaggle served '{competition}' as {response.url.split('?')[0]}, not a zip; report this")
        if api.download_needed(response, str(bundle), quiet=False):
            api.download_file(
                response,
                str(bundle),
                kaggle.http_client(),
                quiet=False,
                resume=True,
                max_retries=retries,
                timeout=timeout_s,
            )


def _from_kaggle(competition: str, retries: int, timeout_s: float) -> None:
    api = kaggle_api()
    STAGING.mkdir(parents=True, exist_ok=True)
    bundle = STAGING / f"{competition}.zip"
    log(f"download: fetching competition '{competition}' with the kaggle client")
    try:
        with _stall_guard(bundle, timeout_s):
            _fetch(api, competition, bundle, retries, timeout_s)
    except UserError:
        raise
    except Exception as exc:  # the client raises requests/ValueError/OSError variants
        if _disk_full(exc):
            raise UserError(
                f"no space left on the device holding {STAGING}/ "
                f"({shutil.disk_usage(STAGING.parent).free >> 20} MiB free); "
                "free some space and run again to resume"
            ) from None
        explained = explain_http_error(exc, competition)
        if explained is not None:
            raise explained from None
        raise UserError(
            f"download of '{competition}' failed ({type(exc).__name__}: {exc}); run again to resume"
        ) from None
    if not bundle.is_file():
        raise UserError(f"{bundle}: the kaggle client reported success but wrote no file; run again")
    try:
        _install(lambda dest: _extract_bundle(bundle, dest))
    except UserError:
        # A complete-looking but corrupt bundle must not be resumed onto next time.
        bundle.unlink(missing_ok=True)
        raise
    shutil.rmtree(STAGING, ignore_errors=True)


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run(params: Params) -> None:
    source = params.data.source
    if source == "kaggle":
        _from_kaggle(params.data.competition, params.data.retries, params.data.timeout_s)
    else:
        _from_local(Path(source).expanduser())
    sizes = ", ".join(f"{f} {(RAW / f).stat().st_size / 1e6:.1f} MB" for f in FILES)
    log(f"download: {RAW}/ holds {sizes}")
