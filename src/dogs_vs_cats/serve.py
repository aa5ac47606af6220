"""`dogs-vs-cats serve`: a tiny HTTP service a device can expose.

    curl --data-binary @cat.jpg http://127.0.0.1:8080/predict
    {"p_dog": 0.0312, "label": "cat"}

Standard library only (plus the LiteRT runtime for .tflite models), so it runs on a
Raspberry Pi without TensorFlow. One interpreter is shared behind a lock: LiteRT
interpreters are not thread-safe, and on a small device one image at a time is
what the cores can do anyway.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .common import log
from .images import BadImage, load_image
from .predict import Predictor


def make_server(model: str, host: str, port: int, max_bytes: int) -> ThreadingHTTPServer:
    predictor = Predictor(model)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "dogs-vs-cats"

        def log_message(self, fmt, *args):
            log(f"serve: {self.address_string()} {fmt % args}")

        def _reply(self, status: int, obj: dict):
            body = (json.dumps(obj) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str):
            self._reply(status, {"error": message})

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
            data = self.rfile.read(n)
            try:
                image = load_image(data, predictor.image_size)
            except BadImage as exc:
                return self._error(415, f"body is not a decodable image ({exc}); send a JPEG or PNG")
            with lock:
                p = predictor.p_dog_one(image)
            return self._reply(200, {"p_dog": round(p, 6), "label": "dog" if p >= 0.5 else "cat"})

        def _method_not_allowed(self):
            self._error(405, f"{self.command} is not supported; POST an image to /predict")

        do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def run(model: str, host: str, port: int, max_bytes: int) -> None:
    server = make_server(model, host, port, max_bytes)
    log(f"serve: {model} on http://{host}:{server.server_address[1]}/predict (POST an image); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
