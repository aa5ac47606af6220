"""A fake Kaggle API on 127.0.0.1 that the real `kaggle` client talks to, unchanged.

It speaks kagglesdk's wire format (see ../shared/docs/KAGGLE_API.md): JSON POSTs to
`/v1/{Service}/{Method}`, a 302 to the competition zip, Range requests for resumed
downloads, the three-step submission upload, and a submission list whose scores are
the log loss of P(dog) against the solution file. It is the only code in the project
that reads the solution file.

Faults are switched on per test through `server.fault`:
  status          answer every competition call with this HTTP error (401, 403, 404)
  truncate_at     close the archive download after this many bytes, `truncate_times` times
  short_body      send a Content-Length larger than the body, then close (once)
  hang_s          stall this long before answering the archive download
  stall_at        send this many bytes of the archive, then stall (for a test to kill the client)
  reject_upload   answer the storage PUT with 500
  score_error     mark new submissions as ERROR
Run `python bench/fake_kaggle.py` to serve by hand; it prints the environment to use.
"""

from __future__ import annotations

import base64
import csv
import email.utils
import io
import json
import math
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "kaggle"
COMPETITION = "dogs-vs-cats-redux-kernels-edition"
USERNAME, KEY, TOKEN = "tester", "0123456789abcdef0123456789abcdef", "KGAT_faketoken_for_tests"


def log_loss(truth: dict[int, int], submission: bytes) -> float:
    """Kaggle's metric for this competition; raises ValueError on a malformed file."""
    rows = list(csv.reader(io.StringIO(submission.decode("utf-8"))))
    if not rows or [h.strip() for h in rows[0]] != ["id", "label"]:
        raise ValueError("header must be id,label")
    got = {}
    for row in rows[1:]:
        if not row:
            continue
        i, p = int(row[0]), float(row[1])
        if math.isnan(p) or not 0 <= p <= 1:
            raise ValueError(f"label {p} out of range")
        got[i] = p
    if set(got) != set(truth):
        raise ValueError("ids do not match the test set")
    eps = 1e-15
    total = 0.0
    for i, y in truth.items():
        p = min(max(got[i], eps), 1 - eps)
        total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return total / len(truth)


class FakeKaggle:
    def __init__(self, data_dir: Path = SHARED / COMPETITION, solution: Path = SHARED / f"{COMPETITION}.solution.csv"):
        self.data_dir, self.solution = Path(data_dir), Path(solution)
        self.fault: dict = {}
        self.submissions: list[dict] = []
        self.requests: list[str] = []
        self.uploads: dict[str, bytes] = {}
        self._bundle: bytes | None = None
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def env(self, token: bool = False) -> dict[str, str]:
        """Environment that points a `kaggle` subprocess (or `dvc repro`) at this server."""
        env = {
            "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
            "HTTP_PROXY": self.url,
            "http_proxy": self.url,
            "NO_PROXY": "",
            "no_proxy": "",
        }
        if token:
            env["KAGGLE_API_TOKEN"] = TOKEN
        else:
            env.update(KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY)
        return env

    def bundle(self) -> bytes:
        """The competition zip as Kaggle serves it: the three files at its top level."""
        with self._lock:
            if self._bundle is None:
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
                    for name in ("train.zip", "test.zip", "sample_submission.csv"):
                        zf.write(self.data_dir / name, name)
                self._bundle = buf.getvalue()
            return self._bundle

    def truth(self) -> dict[int, int]:
        with open(self.solution, newline="") as f:
            return {int(r["id"]): int(float(r["label"])) for r in csv.DictReader(f)}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            # --- helpers -------------------------------------------------
            def _path(self) -> str:
                # Proxy-form request lines carry the full URL; kagglesdk's LOCALHOST env adds /api.
                path = urlsplit(self.path).path if "://" in self.path else self.path.split("?")[0]
                return path[4:] if path.startswith("/api/") else path

            def _json(self, status: int, obj: dict, headers: dict | None = None):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str):
                self._json(status, {"code": status, "message": message})

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                if auth == f"Bearer {TOKEN}":
                    return True
                if auth.startswith("Basic "):
                    try:
                        user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
                    except ValueError:
                        return False
                    return (user, key) == (USERNAME, KEY)
                return False

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            # --- verbs ---------------------------------------------------
            def do_POST(self):
                path = self._path()
                server.requests.append(path)
                raw = self._body()
                try:
                    req = json.loads(raw or b"{}")
                except ValueError:
                    return self._error(400, "body is not JSON")
                service, _, method = path.removeprefix("/v1/").partition("/")
                if method == "IntrospectToken":
                    ok = req.get("token") == TOKEN
                    return self._json(200, {"active": ok, "username": USERNAME if ok else ""})
                if not self._authorized():
                    return self._error(401, "Unauthenticated")
                if service != "competitions.CompetitionApiService":
                    return self._error(404, f"no such service {service}")
                status = server.fault.get("status")
                if status:
                    return self._error(
                        status,
                        {
                            401: "Unauthenticated",
                            403: "You must accept this competition's rules",
                            404: "Competition not found",
                        }.get(status, "error"),
                    )
                if req.get("competitionName") != COMPETITION:
                    return self._error(404, "Competition not found")
                handler = getattr(self, f"_{method}", None)
                if handler is None:
                    return self._error(404, f"no such method {method}")
                return handler(req)

            def _DownloadDataFiles(self, req):
                self.send_response(302)
                self.send_header("Location", f"{server.url}/files/{COMPETITION}.zip")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _StartSubmissionUpload(self, req):
                token = uuid.uuid4().hex
                return self._json(200, {"token": token, "createUrl": f"{server.url}/upload/{token}"})

            def _CreateSubmission(self, req):
                token = req.get("blobFileTokens")
                data = server.uploads.get(token)
                if data is None:
                    return self._error(400, "unknown upload token")
                ref = len(server.submissions) + 1
                sub = {
                    "ref": ref,
                    "fileName": "submission.csv",
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "description": req.get("submissionDescription", ""),
                    "status": "PENDING",
                    "publicScore": "",
                    "privateScore": "",
                    "_ready": time.monotonic() + 0.5,
                }
                if server.fault.get("score_error"):
                    sub["_error"] = "fault injected"
                else:
                    try:
                        score = log_loss(server.truth(), data)
                        sub["_score"] = f"{score:.5f}"
                    except (ValueError, UnicodeDecodeError) as exc:
                        sub["_error"] = str(exc)
                server.submissions.append(sub)
                return self._json(200, {"message": "Successfully submitted", "ref": ref})

            def _GetSubmissionLimits(self, req):
                return self._json(
                    200,
                    {
                        "numToday": len(server.submissions),
                        "numTotal": len(server.submissions),
                        "numAllowedNow": 5,
                        "limitedByTotal": False,
                    },
                )

            def _ListSubmissions(self, req):
                out = []
                for sub in reversed(server.submissions):
                    if sub["status"] == "PENDING" and time.monotonic() >= sub["_ready"]:
                        if "_error" in sub:
                            sub["status"] = "ERROR"
                            sub["errorDescription"] = sub["_error"]
                        else:
                            sub["status"] = "COMPLETE"
                            sub["publicScore"] = sub["privateScore"] = sub["_score"]
                    out.append({k: v for k, v in sub.items() if not k.startswith("_")})
                return self._json(200, {"submissions": out})

            def do_PUT(self):
                path = self._path()
                server.requests.append(f"PUT {path}")
                data = self._body()
                if server.fault.get("reject_upload"):
                    return self._error(500, "storage unavailable")
                server.uploads[path.rsplit("/", 1)[-1]] = data
                return self._json(200, {})

            def do_GET(self):
                path = self._path()
                server.requests.append(f"GET {path} {self.headers.get('Range', '')}".rstrip())
                if path != f"/files/{COMPETITION}.zip":
                    return self._error(404, "not found")
                data = server.bundle()
                hang = server.fault.get("hang_s")
                if hang:
                    time.sleep(hang)
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"fake-etag-1"')
                self.send_header("Last-Modified", email.utils.formatdate(1700000000, usegmt=True))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                stall = server.fault.pop("stall_at", None)
                if stall is not None:
                    self.wfile.write(body[:stall])
                    self.wfile.flush()
                    time.sleep(30)  # bounded: the test kills the client long before
                    self.close_connection = True
                    return
                cut = server.fault.get("truncate_at")
                if cut is not None and server.fault.get("truncate_times", 1) > 0:
                    server.fault["truncate_times"] = server.fault.get("truncate_times", 1) - 1
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.fault.pop("short_body", False):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                view = memoryview(body)
                for i in range(0, len(body), 1 << 20):
                    self.wfile.write(view[i : i + (1 << 20)])

        return Handler


if __name__ == "__main__":
    with FakeKaggle() as fake:
        print("fake Kaggle on", fake.url)
        for k, v in fake.env().items():
            print(f"export {k}={v!r}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
