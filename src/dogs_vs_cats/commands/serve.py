"""`dogs-vs-cats serve`: a small HTTP service a device can expose, on waitress.

    curl --data-binary @cat.jpg http://127.0.0.1:8080/predict
    {"p_dog": 0.0312, "label": "cat"}

waitress is a production WSGI server in pure Python, so the service still installs on a
Raspberry Pi with pip and runs without TensorFlow (a .tflite model needs LiteRT only). It reads
every request, headers and body, in one event loop before any worker thread sees it: a client
that trickles its bytes holds a socket and a small buffer, never a worker. It also bounds the
header's size and the body's, and spools a body past a small buffer to a temporary file.

Every request is bounded, so no client can take the service down:
- bytes: the body may not exceed `max_bytes` (413, answered from the header, nothing kept: what the
  client still sends is discarded until it closes or `timeout_s` passes, so it reads the 413);
- decode: a photo whose decoded size would pass `max_pixels`, or whose decode would take more than
  `max_decode_bytes` of memory in its mode, is refused from its header (413), before a pixel is
  decoded; one photo is decoded and scored at a time, so the service holds one decode's memory;
- time: a client has `timeout_s` to send its whole request, however slowly it trickles (408);
  a request that has arrived is never cut while it waits for the model;
- concurrency: at most `max_connections` requests are in the service at once, waiting for the
  model or in it; the next gets a 503 at once. Open connections are capped at
  CONNECTIONS_PER_SLOT times that; past it, new ones wait in the kernel's accept queue.
"""

from __future__ import annotations

import json
import socket
import threading
import time

from ..common import UserError, log
from ..images import MAX_DECODE_BYTES, MAX_PIXELS, BadImage, TooLarge, load_image
from ..inference import Predictor

CONNECTIONS_PER_SLOT = 8  # slow senders cost a socket and a small buffer each, until cut at the timeout
HEADER_BYTES = 16 << 10  # a request's headers; a photo upload needs a few hundred bytes
BODY_IN_MEMORY = 256 << 10  # waitress spools a body past this to a temporary file
STATUS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _response(status: int, obj: dict) -> tuple[str, list, bytes]:
    body = (json.dumps(obj) + "\n").encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return f"{status} {STATUS[status]}", headers, body


def _raw_response(status: int, message: str) -> bytes:
    line, headers, body = _response(status, {"error": message})
    head = "".join(f"{k}: {v}\r\n" for k, v in headers + [("Connection", "close")])
    return f"HTTP/1.1 {line}\r\n{head}\r\n".encode() + body


def make_app(predictor: Predictor, *, max_bytes: int, max_pixels: int, max_decode_bytes: int, max_connections: int):
    """The WSGI application: /predict and /health, each answer one JSON line."""
    model_lock = threading.Lock()  # LiteRT interpreters are not thread-safe; one decode's memory at a time
    slots = threading.BoundedSemaphore(max_connections)

    def app(environ, start_response):
        def reply(status: int, obj: dict):
            line, headers, body = _response(status, obj)
            start_response(line, headers)
            return [body]

        def error(status: int, message: str):
            return reply(status, {"error": message})

        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path == "/health" and method == "GET":
            return reply(200, {"status": "ok", "model": str(predictor.path), "image_size": predictor.image_size})
        if path != "/predict":
            return error(404, f"no such path {path}; POST an image to /predict")
        if method == "GET":
            return error(405, "use POST /predict with the image bytes as the request body")
        if method != "POST":
            return error(405, f"{method} is not supported; POST an image to /predict")
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.strip().isdigit():
            if length:
                return error(400, "Content-Length is not a number")
            return error(411, "send a Content-Length header with the image bytes")
        n = int(length)
        if n > max_bytes:  # waitress answers first when the header says so; a chunked body is counted here
            return error(413, f"image is {n} bytes; the limit is {max_bytes}")
        if n == 0:
            return error(400, "empty body; POST the image file's bytes")
        if not slots.acquire(blocking=False):
            return error(503, "the service is busy; try again shortly")
        try:
            data = environ["wsgi.input"].read(n)
            with model_lock:
                p = predictor.p_dog_one(load_image(data, predictor.image_size, max_pixels, max_decode_bytes))
        except TooLarge as exc:
            return error(413, f"image {exc}; send a smaller one")
        except BadImage as exc:
            return error(415, f"body is not a decodable image ({exc}); send a JPEG or PNG")
        finally:
            slots.release()
        return reply(200, {"p_dog": round(p, 6), "label": "dog" if p >= 0.5 else "cat"})

    app.model_lock = model_lock  # for tests: hold the model to see requests wait for it
    return app


def _server_classes():
    """waitress' server, channel and error task, with the two things this service adds: a deadline for a
    whole request, and errors answered as one JSON line like every other answer."""
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            e, adj = self.request.error, self.channel.server.adj
            if e.code == 413:
                message = f"the body is too large; the limit is {adj.max_request_body_size} bytes"
            elif e.code == 431:
                message = f"the headers are too large; the limit is {adj.max_request_header_size} bytes"
            else:
                message = f"{e.reason.lower()}: {' '.join(str(e.body).split())}"
            line, headers, body = _response(e.code if e.code in STATUS else 400, {"error": message})
            self.status = line
            self.response_headers.extend(h for h in headers if h[0] == "Content-Type")
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)
            self.channel.refused_unread = True  # answered from the header: the client may still be sending

    class Channel(HTTPChannel):
        error_task_class = JsonErrorTask
        started = 0.0  # when the request now arriving sent its first byte
        refused_unread = False
        linger_until = 0.0  # past 0: answered and half-closed, discarding what the client still sends

        def received(self, data):
            if data and self.request is None:
                self.started = time.time()
            return super().received(data)

        def handle_close(self):
            # A refusal sent before the body was read, then a plain close, would reset the connection
            # while the client is still sending, and a reset makes the client drop the answer it has
            # not read yet: it sees "connection reset" instead of the 413. So, as Apache and nginx do,
            # end only the sending side and discard what still comes, until the client closes or the
            # request's deadline passes again.
            if not (self.refused_unread and self.connected) or self.linger_until:
                return super().handle_close()
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                return super().handle_close()
            self.linger_until = time.time() + self.server.deadline
            self.will_close = self.close_when_flushed = False

        def readable(self):
            return bool(self.linger_until) or super().readable()

        def writable(self):
            return not self.linger_until and super().writable()

        def handle_read(self):
            if not self.linger_until:
                return super().handle_read()
            try:
                data = self.socket.recv(self.adj.recv_bytes)
            except OSError:
                data = b""
            if not data or time.time() > self.linger_until:
                super().handle_close()

    class DeadlineServer(TcpWSGIServer):
        """Cuts, with a 408, a connection whose request has not fully arrived `deadline` seconds after its
        first byte. waitress' own channel_timeout counts silence, which a byte a second never reaches; it
        still closes a connection that sends nothing at all for that long."""

        channel_class = Channel
        deadline = 20.0

        def maintenance(self, now):
            super().maintenance(now)
            for channel in list(self.active_channels.values()):
                if channel.linger_until:
                    if now > channel.linger_until:  # a client that keeps sending after its refusal
                        HTTPChannel.handle_close(channel)
                    continue
                arriving = channel.request is not None and not channel.requests  # complete ones are never cut
                if not arriving or channel.will_close or channel.close_when_flushed:
                    continue
                if now - channel.started > self.deadline:
                    message = f"the request was not complete within {self.deadline:g} s; send it faster"
                    try:
                        channel.write_soon(_raw_response(408, message))
                    except Exception:  # the client has gone: nothing to answer
                        channel.will_close = True
                        continue
                    channel.close_when_flushed = True

    return DeadlineServer


def make_server(
    model: str,
    host: str,
    port: int,
    *,
    max_bytes: int,
    max_pixels: int = MAX_PIXELS,
    max_decode_bytes: int = MAX_DECODE_BYTES,
    timeout_s: float = 20.0,
    max_connections: int = 32,
):
    """The service, listening but not yet serving: call `.run()`, and `.close()` to stop."""
    for name, value in (
        ("--max-bytes", max_bytes),
        ("--max-pixels", max_pixels),
        ("--max-decode-mb", max_decode_bytes),
        ("--max-connections", max_connections),
    ):
        if value < 1:
            raise UserError(f"serve: {name} {value} is invalid: expected a positive number")
    if not timeout_s > 0:
        raise UserError(f"serve: --timeout {timeout_s} is invalid: expected seconds above 0")
    try:
        from waitress.adjustments import Adjustments
        from waitress.task import ThreadedTaskDispatcher
    except ImportError:
        raise UserError("serve needs waitress: pip install waitress") from None
    app = make_app(
        Predictor(model),
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        max_decode_bytes=max_decode_bytes,
        max_connections=max_connections,
    )
    adj = Adjustments(
        host=host,
        port=port,
        # One more worker than request slots, so a request past them is answered 503 at once.
        threads=max_connections + 1,
        connection_limit=CONNECTIONS_PER_SLOT * max_connections,
        backlog=max(64, 2 * max_connections),
        max_request_header_size=HEADER_BYTES,
        max_request_body_size=max_bytes,
        inbuf_overflow=BODY_IN_MEMORY,
        # Silence this long closes a connection that never started a request; one that has is cut by the
        # deadline first, with a 408.
        channel_timeout=int(timeout_s) + 2,
        cleanup_interval=1,
        ident="dogs-vs-cats",
        expose_tracebacks=False,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    server_class = _server_classes()
    server = server_class(app, {}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
    server.deadline = timeout_s
    server.application = app
    return server


def run(
    *,
    model: str,
    host: str,
    port: int,
    max_bytes: int,
    max_pixels: int,
    max_decode_bytes: int,
    timeout_s: float,
    max_connections: int,
):
    server = make_server(
        model,
        host,
        port,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        max_decode_bytes=max_decode_bytes,
        timeout_s=timeout_s,
        max_connections=max_connections,
    )
    log(f"serve: {model} on http://{host}:{server.effective_port}/predict (POST an image); Ctrl-C stops")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        server.task_dispatcher.shutdown()
