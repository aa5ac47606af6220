"""`dogs-vs-cats serve`: a tiny HTTP service a device can expose.

    curl --data-binary @cat.jpg http://127.0.0.1:8080/predict
    {"p_dog": 0.0312, "label": "cat"}

Standard library only (plus the LiteRT runtime for .tflite models), so it runs on a
Raspberry Pi without TensorFlow. One interpreter is shared behind a lock: LiteRT
interpreters are not thread-safe, and on a small device one image at a time is
what the cores can do anyway.

Every request is bounded, so no client can take the service down:
- bytes: the body may not exceed `max_bytes`;
- pixels: a photo whose decoded size would exceed `max_pixels` is refused from its header,
  before any pixel is decoded (a small PNG can claim 100 megapixels of one colour);
- time: a client has `timeout_s` to send its whole request, however slowly it trickles;
- concurrency: one photo is decoded and scored at a time, and at most `max_connections`
  connections are served at once; the next one gets a 503 at once;
- memory: request bodies held at once total at most `max_buffered` bytes, counted as they
  arrive (so a client that claims a large body and sends nothing holds nothing); a request
  that would pass it gets a 503.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..common import UserError, log
from ..images import BadImage, TooLarge, load_image
from ..inference import Predictor

CHUNK = 64 << 10
BUSY = object()  # _read_body's answer when the body would pass max_buffered


class BoundedServer(ThreadingHTTPServer):
    """A threading server that answers 503 instead of starting a thread past `max_connections`."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        # The kernel's queue of connections not yet accepted: at socketserver's default of 5, a burst
        # of clients overflows it, and each dropped connection waits a second to retry or is reset.
        self.request_queue_size = max(64, 2 * max_connections)
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                body = b'{"error": "the service is busy; try again shortly"}\n'
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_server(
    model: str,
    host: str,
    port: int,
    max_bytes: int,
    max_pixels: int = 40_000_000,
    timeout_s: float = 20.0,
    max_connections: int = 32,
    max_buffered: int | None = None,
) -> ThreadingHTTPServer:
    max_buffered = max_buffered or max(64 << 20, 4 * max_bytes)  # room for two of the largest bodies
    for name, value in (
        ("--max-bytes", max_bytes),
        ("--max-pixels", max_pixels),
        ("--max-connections", max_connections),
    ):
        if value < 1:
            raise UserError(f"serve: {name} {value} is invalid: expected a positive number")
    if not timeout_s > 0:
        raise UserError(f"serve: --timeout {timeout_s} is invalid: expected seconds above 0")
    predictor = Predictor(model)
    lock = threading.Lock()
    buffered = {"bytes": 0}
    buffered_lock = threading.Lock()

    def reserve(n: int) -> bool:
        with buffered_lock:
            if buffered["bytes"] + n > max_buffered:
                return False
            buffered["bytes"] += n
            return True

    def release(n: int) -> None:
        with buffered_lock:
            buffered["bytes"] -= n

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "dogs-vs-cats"
        timeout = timeout_s  # per socket operation: an idle or silent client is dropped

        def setup(self):
            super().setup()
            self._watchdog = None
            self._arm()

        def _arm(self):
            """A deadline for the whole next request, however slowly it trickles in: at it, the body
            reader answers 408, and a request still unread a second later has its socket shut."""
            if self._watchdog is not None:
                self._watchdog.cancel()
            self.deadline = time.monotonic() + timeout_s
            self._watchdog = threading.Timer(timeout_s + 1.0, self._cut)
            self._watchdog.daemon = True
            self._watchdog.start()

        def _cut(self):
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self):
            self._watchdog.cancel()
            super().finish()

        def log_message(self, fmt, *args):
            log(f"serve: {self.address_string()} {fmt % args}")

        def _reply(self, status: int, obj: dict):
            body = (json.dumps(obj) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self._arm()  # a kept-alive connection's next request gets its own deadline

        def _error(self, status: int, message: str):
            self._reply(status, {"error": message})

        def _read_body(self, n: int):
            """The `n` body bytes; None if the client did not send them before the deadline, BUSY if
            holding them would pass max_buffered. Bytes count as they arrive (twice: the chunks and
            their join), so a client that claims a large body and sends nothing holds nothing."""
            chunks, got = [], 0
            while got < n:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    return None
                self.connection.settimeout(min(left, timeout_s))
                try:
                    chunk = self.rfile.read1(min(CHUNK, n - got))
                except TimeoutError:
                    return None
                if not chunk:
                    return None
                if not reserve(2 * len(chunk)):
                    return BUSY
                self.held += 2 * len(chunk)
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        def do_GET(self):
            if self.path == "/health":
                return self._reply(
                    200, {"status": "ok", "model": str(predictor.path), "image_size": predictor.image_size}
                )
            if self.path == "/predict":
                return self._error(405, "use POST /predict with the image bytes as the request body")
            return self._error(404, f"no such path {self.path}; POST an image to /predict")

        def do_POST(self):
            if self.path != "/predict":
                return self._error(404, f"no such path {self.path}; POST an image to /predict")
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True
                return self._error(411, "send a Content-Length header with the image bytes")
            try:
                n = int(length)
            except ValueError:
                self.close_connection = True
                return self._error(400, "Content-Length is not a number")
            if n > max_bytes:
                self.close_connection = True  # don't read a huge body just to discard it
                return self._error(413, f"image is {n} bytes; the limit is {max_bytes}")
            if n <= 0:
                return self._error(400, "empty body; POST the image file's bytes")
            self.held = 0  # body bytes this request holds against max_buffered
            try:
                self._score(n)
            finally:
                release(self.held)

        def _score(self, n: int):
            data = self._read_body(n)
            if data is BUSY:
                self.close_connection = True
                return self._error(503, "the service holds as many uploads as it may; try again shortly")
            if data is None:
                self.close_connection = True
                return self._error(408, f"the request was not complete within {timeout_s:g} s; send it faster")
            self._watchdog.cancel()  # the client has sent it all: waiting for the model is not its delay
            try:
                with lock:  # one decode and one inference at a time: memory stays that of one photo
                    p = predictor.p_dog_one(load_image(data, predictor.image_size, max_pixels))
            except TooLarge as exc:
                return self._error(
                    413, f"image decodes to {exc.pixels:,} pixels; the limit is {max_pixels:,}: send a smaller one"
                )
            except BadImage as exc:
                return self._error(415, f"body is not a decodable image ({exc}); send a JPEG or PNG")
            return self._reply(200, {"p_dog": round(p, 6), "label": "dog" if p >= 0.5 else "cat"})

        def _method_not_allowed(self):
            self._error(405, f"{self.command} is not supported; POST an image to /predict")

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    return BoundedServer((host, port), Handler, max_connections)


def run(*, model: str, host: str, port: int, max_bytes: int, max_pixels: int, timeout_s: float, max_connections: int):
    server = make_server(model, host, port, max_bytes, max_pixels, timeout_s, max_connections)
    log(f"serve: {model} on http://{host}:{server.server_address[1]}/predict (POST an image); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
