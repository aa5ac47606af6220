#!/usr/bin/env python
"""Hostile archive: a competition zip whose member inflates to 4 GiB, given to the download stage.

Builds the zip (4 GiB of zeros deflate to about 18 MB), points `data.source` of a project copy at it,
runs `dogs-vs-cats download`, and prints how long the refusal took, the stage's peak memory, what it
said, and whether anything was installed or left behind.

    .venv/bin/python bench/archive.py [--gib 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from benchlib import BIN, copy_project, machine, project_env, set_params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0, help="what the member inflates to, in GiB")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        bundle = work / "competition.zip"
        chunk = bytes(64 << 20)
        with zipfile.ZipFile(bundle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            with zf.open("train.zip", "w", force_zip64=True) as w:
                for _ in range(max(1, round(args.gib * 16))):
                    w.write(chunk)
            zf.writestr("test.zip", b"")
            zf.writestr("sample_submission.csv", "id,label\n")
        project = copy_project(work / "project")
        set_params(project, **{"data.source": str(bundle)})
        start = time.monotonic()
        run = subprocess.run(
            [str(BIN / "dogs-vs-cats"), "download"],
            cwd=project,
            env=project_env(),
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - start
        said = run.stderr.strip().splitlines()
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child: the stage
        result = {
            "machine": machine(),
            "member_inflates_to_bytes": int(zipfile.ZipFile(bundle).getinfo("train.zip").file_size),
            "zip_bytes": bundle.stat().st_size,
            "exit": run.returncode,
            "said": [line for line in said if line.startswith("error:")],
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(int(peak_kb) / 1024),
            "installed": (project / "data/raw").exists(),
            "left_behind": (project / "data/raw.tmp").exists(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print(f"refused in {result['seconds']} s (target < 5), peak {result['peak_rss_mb']} MB: {result['said']}")
    met = result["exit"] == 1 and len(result["said"]) == 1 and result["seconds"] < 5 and not result["installed"]
    return 0 if met and not result["left_behind"] else 1


if __name__ == "__main__":
    sys.exit(main())
