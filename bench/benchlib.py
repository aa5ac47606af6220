"""The benches' own library: a scratch copy of the project and its environment, param overrides,
the shared competition folders and the fake Kaggle server, per-stage memory, and the load mix
for `serve`. It never imports tests/; the tests may import it (tests/harness.py does).

Every bench script runs beside this file, so `from benchlib import ...` finds it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from fake_kaggle import COMPETITION, SHARED, FakeKaggle

ROOT = Path(__file__).resolve().parents[1]
SHARED_COMPETITION = SHARED / COMPETITION  # the small fixture: what the tests and smoke runs use
BIN = Path(sys.executable).parent


def machine() -> str:
    """Cores, CPU model and its native bf16 flags: every benchmark figure depends on all three."""
    from dogs_vs_cats.common import BF16_FLAGS, cpu_info

    name, flags = cpu_info()
    bf16 = sorted(flags & BF16_FLAGS)
    return f"{os.cpu_count()} cores, {name}, {'native bf16: ' + ' '.join(bf16) if bf16 else 'no native bf16'}"


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (all held open while picked, so never the same one twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# What every tiny training test shares: 30 photos a class, a 40/10/10 split, 32 px, batches of 8.
TINY = {
    "split.n_train": 40,
    "split.n_val": 10,
    "split.n_holdout": 10,
    "prepare.image_size": 32,
    "train.warmup_epochs": 1,
    "train.batch_size": 8,
    "train.low_res_size": 0,
}


def overrides(items: list[str]) -> dict:
    """`--set KEY=VALUE` arguments as {KEY: VALUE}, VALUE read as YAML (so 0.5 is a number)."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}


def _flat(node: dict, prefix: str = ""):
    for k, v in node.items():
        yield from _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]


def recipe(path: Path) -> dict:
    """A recipe file's params (bench/recipes/) as {dotted.key: value}, as --set gives them."""
    import yaml

    return dict(_flat(yaml.safe_load(Path(path).read_text()) or {}))


def params_changed(project: Path, base: Path) -> dict:
    """The params of `project` that differ from (or are missing in) the params.yaml of `base`, as --set
    gives them: what a kept run was set to, read from the run itself."""
    import yaml

    ours, theirs = (dict(_flat(yaml.safe_load((d / "params.yaml").read_text()))) for d in (project, base))
    return {k: v for k, v in ours.items() if k not in theirs or theirs[k] != v}


def project_env(extra: dict | None = None, home: Path | None = None) -> dict:
    """Environment for subprocesses: our venv first, no real Kaggle credentials leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["DVC_NO_ANALYTICS"] = "1"
    if home is not None:
        env["HOME"] = str(home)
        env["KAGGLE_CONFIG_DIR"] = str(home / ".kaggle")
    env.update(extra or {})
    return env


def copy_project(dest: Path) -> Path:
    """The project's working tree (tracked and untracked, not ignored) as a fresh git repository."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        generated = rel.startswith(("data/", "metrics/")) and not rel.endswith(".gitignore")
        if src.is_file() and not generated:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    # DVC commits experiments itself: give the repository an identity of its own.
    subprocess.run(["git", "config", "user.name", "dogs-vs-cats tests"], cwd=dest, check=True)
    subprocess.run(["git", "config", "user.email", "tests@example.invalid"], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-qm", "project"], cwd=dest, check=True)
    return dest


def with_overrides(data: dict, settings: dict) -> dict:
    """`data` (params as nested dicts) with each dotted key of `settings` set: {"train.epochs": 1}."""
    for dotted, value in settings.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def set_params(project: Path, **settings) -> None:
    """Edit params.yaml in place: set_params(p, **{"train.epochs": 1})."""
    import yaml

    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(with_overrides(yaml.safe_load(path.read_text()), settings), sort_keys=False))


def shared_competition(folder: str | Path | None = None) -> Path:
    """A competition folder of real photos: `folder` (a shared fixture such as ../shared/kaggle-large,
    or the competition folder inside it), or by default the small fixture the tests use."""
    if folder is None:
        return SHARED_COMPETITION
    folder = Path(folder).resolve()
    inner = folder / COMPETITION
    found = inner if inner.is_dir() else folder
    if not (found / "train.zip").is_file():
        raise SystemExit(f"{folder}: holds no train.zip; give a folder laid out as ../shared/kaggle is")
    return found


def bench_arguments(parser, shared: bool = True):
    """The options every bench script takes: --set KEY=VALUE overrides, and which shared photos to use."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param (VALUE read as YAML); repeatable",
    )
    if shared:
        parser.add_argument(
            "--shared",
            type=shared_competition,
            default=SHARED_COMPETITION,
            metavar="DIR",
            help="competition folder of real photos (default: ../shared/kaggle)",
        )
    return parser


def fake_kaggle_for(competition: Path) -> FakeKaggle:
    """The fake Kaggle server serving `competition`, scoring against the solution file beside it."""
    return FakeKaggle(competition, competition.parent / f"{COMPETITION}.solution.csv")


def train_workers(
    folders: list[Path], cluster: dict | None = None, env: dict | None = None, pause: tuple[int, float] | None = None
) -> list[tuple[int, str]]:
    """Run the train stage in every folder at once, worker i of `cluster` (TF_CONFIG) in folder i,
    or each on its own without one; (exit code, stderr) of each, once all have ended.

    `pause` = (i, seconds): once worker i has joined the cluster, stop it (SIGSTOP) that long, as a
    busy or swapping machine might.
    """
    import json

    def tf_config(i):
        return (
            {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})} if cluster else {}
        )

    procs = [
        subprocess.Popen(
            [str(BIN / "dogs-vs-cats"), "train"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**(env or project_env()), **tf_config(i)},
        )
        for i, folder in enumerate(folders)
    ]
    errors = [[] for _ in procs]
    readers = [threading.Thread(target=lines.extend, args=(p.stderr,), daemon=True) for p, lines in zip(procs, errors)]
    for reader in readers:
        reader.start()
    try:
        if pause:
            i, seconds = pause
            while procs[i].poll() is None and not any("strategy multi_worker (" in line for line in errors[i]):
                time.sleep(0.2)
            if procs[i].poll() is None:
                procs[i].send_signal(signal.SIGSTOP)
                time.sleep(seconds)
                procs[i].send_signal(signal.SIGCONT)
        for p, reader in zip(procs, readers):
            p.wait()
            reader.join()
        return [(p.returncode, "".join(lines)) for p, lines in zip(procs, errors)]
    finally:
        for p in procs:
            p.kill()


def run_group(cmd, memory: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group, and stop the whole group if this script is stopped.

    Killing only `dvc repro` would leave its training running, orphaned. With `memory` (a dict),
    each pipeline stage's peak memory and wall time (StageMemory.figures) are put in it.
    """
    from dogs_vs_cats.stages import STAGES

    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        with StageMemory(proc.pid, STAGES) as sampler:
            code = proc.wait()
        if memory is not None:
            memory.update(sampler.figures())
        return subprocess.CompletedProcess(cmd, code)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()


def _processes() -> dict[int, tuple[int, list[str], float]]:
    """Every process now: pid -> (parent pid, argv, RSS in MB)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace").split("\0")
            rss = 0.0
            for line in Path(f"/proc/{entry.name}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
            found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), argv, rss)
        except (OSError, IndexError, ValueError):
            pass
    return found


class StageMemory:
    """Samples, every 0.1 s, the resident memory (RSS) of each pipeline stage under process `root`.

    A stage is a `python -m dogs_vs_cats.stages STAGE` or `dogs-vs-cats STAGE` process (run directly,
    or by `dvc repro` through a shell)
    with all its descendants (decode workers); their RSS is summed, an upper bound, since pages
    the processes share count once per process. `figures()` gives, for each stage seen, its peak,
    its largest single process, and its wall time (first to last sample, so to 0.1 s).
    """

    def __init__(self, root: int, stages):
        self.root, self.stages = root, set(stages)
        self.seen: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _stage_of(self, argv: list[str]) -> str | None:
        # `python -m dogs_vs_cats.stages STAGE` (what dvc.yaml runs) or `dogs-vs-cats STAGE`.
        for i, arg in enumerate(argv[:-1]):
            if (arg == "dogs_vs_cats.stages" or Path(arg).name == "dogs-vs-cats") and argv[i + 1] in self.stages:
                seed = argv[argv.index("--seed") + 1] if "--seed" in argv[:-1] else None
                return argv[i + 1] + (f"@{seed}" if seed else "")  # one entry per member, as dvc names them
        return None

    def _sample(self):
        while not self._stop.is_set():
            procs, now = _processes(), time.monotonic()
            children = {}
            for pid, (ppid, _, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            totals = {}
            frontier = [(self.root, None)]
            while frontier:  # walk down from root; a stage's descendants inherit its name
                pid, stage = frontier.pop()
                if pid not in procs:
                    continue
                stage = self._stage_of(procs[pid][1]) or stage
                if stage:
                    total, largest = totals.get(stage, (0.0, 0.0))
                    totals[stage] = (total + procs[pid][2], max(largest, procs[pid][2]))
                frontier += [(child, stage) for child in children.get(pid, ())]
            for stage, (total, largest) in totals.items():
                s = self.seen.setdefault(stage, {"peak": 0.0, "largest": 0.0, "first": now, "last": now})
                s["peak"], s["largest"], s["last"] = max(s["peak"], total), max(s["largest"], largest), now
            self._stop.wait(0.1)

    def figures(self) -> dict[str, dict]:
        return {
            stage: {
                "peak_rss_mb": round(s["peak"]),
                "largest_process_mb": round(s["largest"]),
                "wall_s": round(s["last"] - s["first"], 1),
            }
            for stage, s in self.seen.items()
        }


# -- Load on `serve`: real photos mixed with hostile requests (tests/test_edge.py, bench/serve_load.py) --

HOSTILE = ("flood", "truncated", "garbage", "stall", "oversize")
EXPECTED_STATUS = {"good": 200, "flood": 413, "truncated": 415, "garbage": 415, "stall": 408, "oversize": 413}


def bomb_png(side: int) -> bytes:
    """A PNG of one colour that is a few hundred KB on the wire and `side` x `side` pixels decoded."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def costly_photos(side: int = 6300) -> dict[str, bytes]:
    """Legal but costly photos: under serve's 40-megapixel default, a few hundred KB on the wire, yet
    16-bit greyscale and RGBA decode to several times an RGB photo's memory."""
    import io

    from PIL import Image

    out = {}
    for name, img in (("16-bit", Image.new("I;16", (side, side), 30000)), ("rgba", Image.new("RGBA", (side, side)))):
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=True)
        out[name] = buf.getvalue()
    return out


def slowloris(port: int, clients: int, byte_every_s: float = 1.0, timeout: float = 120) -> list[dict]:
    """`clients` connections, each sending a request's headers one byte every `byte_every_s` seconds
    until the service answers or closes: per client, the status it got (0: none) and when."""
    from concurrent.futures import ThreadPoolExecutor

    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"

    def client(_):
        start = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        answer = b""
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(byte_every_s)
        except OSError:
            pass  # cut by the service
        try:
            answer = sock.recv(4096)
        except OSError:
            pass
        sock.close()
        status = int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
        return {"status": status, "seconds": time.monotonic() - start}

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(client, range(clients)))


def post(port: int, body: bytes, timeout: float = 30) -> tuple[int, dict]:
    """POST `body` to /predict: (status, answer); status 0 if the service closed without answering."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    except (OSError, http.client.HTTPException):
        return 0, {}
    finally:
        conn.close()


def stalled_post(port: int, claimed: int, sent: bytes, timeout: float = 30) -> int:
    """Send headers claiming `claimed` bytes, then only `sent`, then wait: the status the service answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % claimed + sent)
        answer = sock.recv(4096)
        return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0
    except OSError:
        return 0
    finally:
        sock.close()


def hostile_bodies(good: bytes, max_pixels: int, seed: int = 0) -> dict[str, bytes]:
    """The body of each hostile kind that sends one (flood, truncated, garbage): built once, sent many times."""
    side = int(max_pixels**0.5) + 1000
    return {
        "flood": bomb_png(side),  # over max_pixels decoded, a few hundred KB on the wire
        "truncated": good[: len(good) // 3],
        "garbage": np.random.default_rng(seed).integers(0, 256, 20_000, np.uint8).tobytes(),
    }


def load_mix(
    port: int,
    good: list[bytes],
    hostile: dict[str, bytes],
    max_bytes: int,
    clients: int,
    per_client: int,
    hostile_every: int,
    seed: int = 0,
) -> list[dict]:
    """`clients` threads, each sending `per_client` requests one after another: real photos, and every
    `hostile_every`-th a hostile one, the kinds in turn. `stall` sends a third of a photo and stops;
    `oversize` claims max_bytes + 1 (and sends none of it: the service answers from the header).
    A record per request: kind, status, seconds, and the photo's index and answer for good ones."""
    from concurrent.futures import ThreadPoolExecutor

    def client(c: int) -> list[dict]:
        rng = np.random.default_rng([seed, c])
        records = []
        for r in range(per_client):
            n = c * per_client + r
            kind = HOSTILE[(n // hostile_every) % len(HOSTILE)] if n % hostile_every == hostile_every - 1 else "good"
            photo = int(rng.integers(len(good)))
            t0 = time.monotonic()
            if kind == "stall":
                status, answer = stalled_post(port, len(good[photo]), good[photo][: len(good[photo]) // 3]), {}
            elif kind == "oversize":
                status, answer = stalled_post(port, max_bytes + 1, b""), {}
            else:
                status, answer = post(port, good[photo] if kind == "good" else hostile[kind])
            record = {"kind": kind, "status": status, "seconds": time.monotonic() - t0}
            if kind == "good":
                record.update(photo=photo, p_dog=answer.get("p_dog"))
            records.append(record)
        return records

    with ThreadPoolExecutor(clients) as pool:
        return [r for records in pool.map(client, range(clients)) for r in records]
