#!/usr/bin/env python
"""Load on `serve`: concurrent clients sending real photos, mixed with hostile requests, on 127.0.0.1.

Starts `dogs-vs-cats serve` with a .tflite model and its default limits (but `--timeout`), then
`--clients` threads each send `--requests` requests one after another: real test photos of
the competition folder, and every `--hostile-every`-th a hostile one, in turn: a pixel flood (a
PNG of one colour over `--max-pixels` decoded, a few hundred KB sent), a truncated photo,
random bytes, a stalled sender (a third of a photo, then silence), and a body claimed over
`--max-bytes`. Bounded in count, and in time by the service's timeout.

Reports requests served, failures among the good ones (anything but a 200: target 0), p50 and
p99 latency of the good ones, each hostile kind's answers, and the service's peak resident
memory (VmHWM, exact: target at most 400 MB with the int8 model).

    .venv/bin/python bench/serve_load.py [--model data/export/model_int8.tflite] [--clients 16]
        [--requests 40] [--hostile-every 4] [--timeout 5] [--shared DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchlib import (
    BIN,
    EXPECTED_STATUS,
    bench_arguments,
    costly_photos,
    free_ports,
    hostile_bodies,
    load_mix,
    machine,
    post,
    project_env,
    slowloris,
)

ROOT = Path(__file__).resolve().parents[1]

MAX_BYTES, MAX_PIXELS = 10 << 20, 40_000_000  # serve's defaults


def memory_mb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {k: round(int(fields[k].split()[0]) / 1024) for k in ("VmHWM", "VmRSS")}


def main() -> int:
    ap = bench_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--model", type=Path, default=ROOT / "data/export/model_int8.tflite")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=40, help="requests per client")
    ap.add_argument("--hostile-every", type=int, default=4, help="every n-th request is hostile")
    ap.add_argument("--timeout", type=float, default=20.0, help="serve --timeout (its default): how long a sender has")
    ap.add_argument("--slow-clients", type=int, default=64, help="clients trickling their headers at once")
    ap.add_argument("--photos", type=int, default=200, help="real test photos to send")
    args = ap.parse_args()
    if not args.model.is_file():
        ap.error(f"--model {args.model}: not found; run `dvc repro` (or give another .tflite)")
    if min(args.clients, args.requests, args.hostile_every, args.photos) < 1:
        ap.error("--clients, --requests, --hostile-every and --photos must be at least 1")

    with zipfile.ZipFile(args.shared / "test.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))[: args.photos]
        good = [z.read(n) for n in names]
    hostile = hostile_bodies(max(good, key=len), MAX_PIXELS)
    costly = costly_photos()

    (port,) = free_ports()
    service = subprocess.Popen(
        [str(BIN / "dogs-vs-cats"), "serve", "--model", str(args.model), "--port", str(port)]
        + ["--timeout", str(args.timeout)],
        env=project_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while post(port, good[0], timeout=5)[0] != 200:  # up, and its interpreter allocated
            if service.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench/serve_load: the service did not start")
            time.sleep(0.2)
        idle = memory_mb(service.pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:  # two of each costly photo at once, beside the mix
            sent = [pool.submit(post, port, costly[kind]) for kind in ("16-bit", "rgba", "16-bit", "rgba")]
            records = load_mix(port, good, hostile, MAX_BYTES, args.clients, args.requests, args.hostile_every)
            costly_answers = [(kind, s.result()) for kind, s in zip(("16-bit", "rgba", "16-bit", "rgba"), sent)]
        wall = time.monotonic() - t0
        # A slowloris: clients trickling their headers a byte a second; a photo sent meanwhile.
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(slowloris, port, args.slow_clients)
            time.sleep(2)
            t1 = time.monotonic()
            during = post(port, good[1 % len(good)], timeout=30)[0]
            during_s = time.monotonic() - t1
            slow = slow.result()
        after = memory_mb(service.pid)
        alive = post(port, good[0], timeout=5)[0] == 200
    finally:
        service.terminate()
        service.wait(timeout=10)

    ok = [r for r in records if r["kind"] == "good"]
    seconds = np.array([r["seconds"] for r in ok])
    kinds = {}
    for r in records:
        kinds.setdefault(r["kind"], {}).setdefault(str(r["status"]), 0)
        kinds[r["kind"]][str(r["status"])] += 1
    result = {
        "machine": machine(),
        "model": str(args.model),
        "clients": args.clients,
        "requests": len(records),
        "served": sum(r["status"] != 0 for r in records),
        "good": len(ok),
        "good_failures": sum(r["status"] != 200 for r in ok),
        "hostile_answered_as_expected": all(
            r["status"] == EXPECTED_STATUS[r["kind"]] for r in records if r["kind"] != "good"
        ),
        "answers": kinds,
        "good_latency_ms": {
            "p50": round(float(np.percentile(seconds, 50)) * 1000, 1),
            "p99": round(float(np.percentile(seconds, 99)) * 1000, 1),
        },
        "costly_photos": [
            {"kind": kind, "bytes": len(costly[kind]), "status": status, "error": answer.get("error")}
            for kind, (status, answer) in costly_answers
        ],
        "slowloris": {
            "clients": args.slow_clients,
            "photo_meanwhile_status": during,
            "photo_meanwhile_s": round(during_s, 3),
            "answers": sorted({str(s["status"]) for s in slow}),
            "cut_after_s": {
                "min": round(min(s["seconds"] for s in slow), 1),
                "max": round(max(s["seconds"] for s in slow), 1),
            },
        },
        "serve_timeout_s": args.timeout,
        "wall_s": round(wall, 1),
        "service_rss_mb": {"idle": idle["VmRSS"], "peak": after["VmHWM"]},
        "alive_after": alive,
    }
    print(json.dumps(result, indent=2))
    print(
        f"{result['requests']} requests from {args.clients} clients in {wall:.1f}s: {result['good_failures']} of "
        f"{len(ok)} photos failed (target 0); p50 {result['good_latency_ms']['p50']} ms, p99 "
        f"{result['good_latency_ms']['p99']} ms; service peak RSS {after['VmHWM']} MB (target <= 400)"
    )
    print(
        f"costly photos: {[a['status'] for a in result['costly_photos']]}; slowloris of {args.slow_clients}: a photo "
        f"meanwhile got {during} in {during_s:.2f} s (target < 1), slow clients cut after "
        + "{min}-{max} s".format(**result["slowloris"]["cut_after_s"])
        + f" (--timeout {args.timeout:g})"
    )
    met = result["good_failures"] == 0 and after["VmHWM"] <= 400 and alive and during == 200 and during_s < 1
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
