#!/usr/bin/env python
"""64-bit ARM proof: a Raspberry Pi's runtime-only install, emulated, gives this machine's answers.

Builds a Debian arm64 root from Debian's packages (`mmdebstrap --variant=extract`, which needs
no binfmt_misc), installs in it, with its own pip and from the package index, what the README
tells a Pi user to install (ai-edge-litert, Pillow, numpy, PyYAML, waitress, then this project with
`--no-deps`), runs `dogs-vs-cats predict` there under `qemu-aarch64-static` on the holdout
photos with the float32, int8 and int4 files, and compares every answer with the same command
run here. Emulation is for correctness, not speed: its times say nothing about a real Pi.

Two things emulation needs that a Pi does not:
- qemu 7.2 hands the guest this machine's own /proc/cpuinfo, which the ARM build of XNNPACK
  cannot parse (it crashes creating its delegate); the root gets the emulated core's instead,
  as the Pi's kernel would show it (`-L` serves the root's files first).
- `--cpu` is a real Pi core (cortex-a72: Pi 4; cortex-a76: Pi 5). qemu's `max` core turns on
  every optional instruction, and XNNPACK's integer kernels for those gave wrong answers under
  qemu 7.2 (the same P(dog) for every photo).

The project's wheel is built here (`pip wheel --no-deps`: pure Python, the same on every
machine): the emulated pip cannot run a build backend, which would exec the arm64 Python.

    apt-get install qemu-user-static mmdebstrap
    .venv/bin/python bench/arm64.py [--project DIR] [--photos N] [--cpu cortex-a72] [--keep DIR]

`--project` is a project folder whose `dvc repro` has run (default: this checkout). `--native` runs
the same steps (the wheel, the runtime-only install, predict, the comparison) with this machine's
Python instead of the emulated root: the suite's smoke test of this script, not a proof about ARM.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from benchlib import BIN, copy_project, machine, project_env  # noqa: E402

FORMS = ("float32", "int8", "int4")
SUITE = "bookworm"
# /proc/cpuinfo of each Pi core, as its kernel shows one of them.
CORES = {
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": (
        "0xd0b",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
    ),
}


def emulated(root: Path, cpu: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run the arm64 root's python3 with `args` under qemu-user (cpu "native": this machine's Python)."""
    env = {**project_env(), "PYTHONPATH": str(root / "opt/pi"), "PYTHONNOUSERSITE": "1"}
    cmd = ["qemu-aarch64-static", "-cpu", cpu, "-L", str(root), str(root / "usr/bin/python3"), *args]
    if cpu == "native":
        cmd = [sys.executable, *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        what = " ".join(args[:4])
        sys.exit(f"bench/arm64: {what} failed under qemu (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return result


def build_root(root: Path, cpu: str) -> None:
    """Debian arm64 with python3 and pip, and the runtime-only install of the README."""
    if cpu == "native":  # this machine's Python already has the runtime; only the project's wheel goes in
        return _install_wheel(root, cpu, [])
    if not (root / "usr/bin/python3").exists():
        subprocess.run(
            ["mmdebstrap", "--variant=extract", "--arch=arm64", "--include=python3,python3-pip,libstdc++6", SUITE]
            + [str(root)],
            check=True,
            capture_output=True,
        )
    part, features = CORES[cpu]
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text(
        "".join(
            f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
            for i in range(4)
        )
    )
    pip = ["-m", "pip", "install", "-q", "--break-system-packages", "--upgrade", "--target", str(root / "opt/pi")]
    emulated(root, cpu, [*pip, "ai-edge-litert", "pillow", "numpy", "pyyaml", "waitress"])
    _install_wheel(root, cpu, ["--break-system-packages"])


def _install_wheel(root: Path, cpu: str, flags: list[str]) -> None:
    pip = ["-m", "pip", "install", "-q", *flags, "--upgrade", "--target", str(root / "opt/pi")]
    dist, source = root.parent / "dist", root.parent / "source"
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(source, ignore_errors=True)
    copy_project(source)  # built from a copy: setuptools leaves a build/ folder where it builds
    subprocess.run(
        [str(BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(dist), str(source)], check=True, capture_output=True
    )
    emulated(root, cpu, [*pip, "--no-deps", *map(str, dist.glob("*.whl"))])


def holdout_photos(project: Path, dest: Path, n: int | None) -> dict[str, int]:
    """`n` holdout photos, evenly spaced through the list (so both classes), written to `dest`: name -> label."""
    with open(project / "data/split/holdout.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if n:
        rows = rows[:: max(1, len(rows) // n)][:n]
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(project / "data/raw/train.zip") as z:
        for row in rows:
            (dest / Path(row["file"]).name).write_bytes(z.read(row["file"]))
    return {Path(row["file"]).name: int(row["label"]) for row in rows}


def read_predictions(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        return {Path(row["file"]).name: float(row["p_dog"]) for row in csv.DictReader(f)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="a project folder whose dvc repro has run")
    ap.add_argument("--photos", type=int, help="this many holdout photos, evenly spaced (default: all)")
    ap.add_argument("--cpu", choices=sorted(CORES), default="cortex-a72", help="the emulated core")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (the root is reused)")
    ap.add_argument("--native", action="store_true", help="this machine's Python instead of the emulated root")
    args = ap.parse_args()
    if args.native:
        args.cpu = "native"
    for tool in () if args.native else ("mmdebstrap", "qemu-aarch64-static"):
        if not shutil.which(tool):
            ap.error(f"{tool} not found; apt-get install qemu-user-static mmdebstrap")
    models = {form: args.project / f"data/export/model_{form}.tflite" for form in FORMS}
    missing = [str(p) for p in [*models.values(), args.project / "data/split/holdout.csv"] if not p.is_file()]
    if missing:
        ap.error(f"{', '.join(missing)}: not found; run `dvc repro` in {args.project} first")

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-arm64-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    try:
        t0 = time.monotonic()
        build_root(root, args.cpu)
        print(f"bench/arm64: arm64 root with the runtime ready ({time.monotonic() - t0:.0f}s)", file=sys.stderr)
        versions = emulated(
            root,
            args.cpu,
            [
                "-c",
                "import platform, sys; from importlib.metadata import version as v; "
                "print(platform.machine(), platform.python_version(), "
                "*(v(p) for p in ('ai-edge-litert', 'numpy', 'pillow', 'dogs-vs-cats')))",
            ],
        ).stdout.split()
        if versions[0] != "aarch64" and not args.native:
            sys.exit(f"bench/arm64: the emulated python says it runs on {versions[0]}, not aarch64")
        labels = holdout_photos(args.project, work / "photos", args.photos)
        forms = {}
        for form, model in models.items():
            here, there = work / f"x86_{form}.csv", work / f"arm64_{form}.csv"
            predict = ["predict", "--model", str(model), str(work / "photos"), "--out"]
            subprocess.run(
                [str(BIN / "dogs-vs-cats"), *predict, str(here)], env=project_env(), check=True, capture_output=True
            )
            t0 = time.monotonic()
            emulated(root, args.cpu, ["-m", "dogs_vs_cats", *predict, str(there)])
            wall = time.monotonic() - t0
            a, b = read_predictions(here), read_predictions(there)
            if set(a) != set(labels) or set(b) != set(labels):
                sys.exit(f"bench/arm64: {form}: predictions cover {len(a)} and {len(b)} of {len(labels)} photos")
            diffs = [abs(a[k] - b[k]) for k in labels]
            forms[form] = {
                "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                "labels_equal": all((a[k] >= 0.5) == (b[k] >= 0.5) for k in labels),
                "max_abs_diff_p_dog": round(max(diffs), 7),
                "photos_differing": sum(d > 0 for d in diffs),
                "accuracy_x86": round(sum((a[k] >= 0.5) == labels[k] for k in labels) / len(labels), 4),
                "accuracy_arm64": round(sum((b[k] >= 0.5) == labels[k] for k in labels) / len(labels), 4),
                "emulated_wall_s": round(wall, 1),
            }
            print(f"bench/arm64: {form}: {forms[form]}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": machine(),
        "emulated": {
            "cpu": args.cpu,
            "debian": SUITE,
            "python": versions[1],
            "ai_edge_litert": versions[2],
            "numpy": versions[3],
            "pillow": versions[4],
        },
        "project": str(args.project),
        "photos": len(labels),
        "forms": forms,
        "float32_within_1e-4": forms["float32"]["max_abs_diff_p_dog"] <= 1e-4,
    }
    print(json.dumps(result, indent=2))
    print(
        f"arm64 ({args.cpu}, emulated) vs x86 on {len(labels)} holdout photos: "
        + "; ".join(
            f"{f} labels {'equal' if r['labels_equal'] else 'DIFFER'}, max |dP| {r['max_abs_diff_p_dog']:.2g}"
            for f, r in forms.items()
        )
    )
    return 0 if all(r["labels_equal"] for r in forms.values()) and result["float32_within_1e-4"] else 1


if __name__ == "__main__":
    sys.exit(main())
