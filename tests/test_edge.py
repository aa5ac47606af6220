"""Edge deployment: TFLite export, prediction without TensorFlow, and the HTTP service."""

from __future__ import annotations

import contextlib
import csv
import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from harness import (
    BIN,
    EXPECTED_STATUS,
    ROOT,
    bomb_png,
    free_ports,
    hostile_bodies,
    image_bytes,
    load_mix,
    post,
    project_env,
)

pytestmark = pytest.mark.slow  # converts to TFLite and serves over HTTP


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small SqueezeNet with a sharpened head (so answers vary), as .keras and every TFLite form."""
    from dogs_vs_cats import params as P
    from dogs_vs_cats.images import load_image
    from dogs_vs_cats.model import squeezenet, with_tta
    from dogs_vs_cats.stages.export import FORMS, convert

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("models")
    x = np.stack([load_image(image_bytes(k, (60, 40), seed=i), 48) for i in range(24) for k in ("cat", "dog")])
    net = squeezenet("squeezenet1_1", 48)
    k, b = net.get_layer("conv10").get_weights()
    net.get_layer("conv10").set_weights([k * 30, b])
    model = with_tta(net, flip=True, crop=0.8)  # every view the train stage ships
    model.save(folder / "model.keras")
    paths = {"keras": folder / "model.keras"}
    for form in FORMS:
        paths[form] = folder / f"model_{form}.tflite"
        # The shipped settings, as the export stage passes them: per-channel int8 by default.
        paths[form].write_bytes(convert(model, form, x[:16], P.load(ROOT / "params.yaml").export))
    return paths, x


def test_tflite_forms_agree_with_keras_and_shrink(models):
    from dogs_vs_cats.inference import Predictor

    paths, x = models
    reference = Predictor(paths["keras"]).p_dog(x)
    assert reference.std() > 0.05  # a model that says something, so agreement means something
    sizes = {form: paths[form].stat().st_size for form in ("float32", "float16", "int8", "int4")}
    assert sizes["int4"] < 0.6 * sizes["int8"] and sizes["int8"] < sizes["float16"] < sizes["float32"]
    for form, tol in (("float32", 1e-4), ("float16", 0.02), ("int8", 0.15), ("int4", 0.25)):
        got = Predictor(paths[form]).p_dog(x)
        assert np.abs(got - reference).max() < tol, form
        assert ((got >= 0.5) == (reference >= 0.5)).mean() >= 0.9
    for form in paths:  # an empty batch is an empty answer, not a oneDNN shape error
        assert Predictor(paths[form]).p_dog(x[:0]).shape == (0,)


def test_the_shipped_int8_form_has_one_scale_per_output_channel(models):
    from dogs_vs_cats.inference import _litert

    paths, _ = models
    interpreter = _litert().Interpreter(model_path=str(paths["int8"]))
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    # Every convolution's filter (its second input): conv1, three per fire module, conv10.
    kernels = [tensors[op["inputs"][1]] for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert len(kernels) == 26 and all(d["dtype"] == np.int8 for d in kernels)
    for d in kernels:
        q = d["quantization_parameters"]
        assert len(q["scales"]) == d["shape"][q["quantized_dimension"]] > 1, d["name"]


def test_the_int4_form_stores_4_bit_filters_but_keeps_the_first_and_last_at_8_bits(models):
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    paths, _ = models
    model = flatbuffer_utils.read_model(str(paths["int4"]))  # the file itself: LiteRT reports int4 as int8
    (graph,) = model.subgraphs
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    convs = [op for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.CONV_2D]
    kernels = [graph.tensors[op.inputs[1]] for op in convs]
    assert len(kernels) == 26
    assert [k.type for k in kernels] == [schema.TensorType.INT8] + [schema.TensorType.INT4] * 24 + [
        schema.TensorType.INT8
    ]
    for k in kernels:  # one scale per output channel; two 4-bit weights a byte
        assert len(k.quantization.scale) == k.shape[k.quantization.quantizedDimension] > 1
        packed = len(model.buffers[k.buffer].data)
        assert packed == (np.prod(k.shape) + 1) // 2 if k.type == schema.TensorType.INT4 else np.prod(k.shape)
    # Integer arithmetic throughout: every convolution reads int8 activations.
    assert {graph.tensors[op.inputs[0]].type for op in convs} == {schema.TensorType.INT8}


def test_exported_files_drop_names_share_repeated_vectors_and_answer_exactly_as_before(models, tmp_path):
    import tensorflow as tf

    from dogs_vs_cats.inference import Predictor, _litert
    from dogs_vs_cats.stages.export import compact

    paths, x = models
    model = keras.models.load_model(paths["keras"])
    named = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    (tmp_path / "named.tflite").write_bytes(named)
    (tmp_path / "plain.tflite").write_bytes(compact(named))
    assert (tmp_path / "plain.tflite").stat().st_size < len(named) - 1000
    assert np.array_equal(Predictor(tmp_path / "plain.tflite").p_dog(x), Predictor(tmp_path / "named.tflite").p_dog(x))
    for form in ("float32", "float16", "int8", "int4"):  # the export stage's files: no names left
        details = _litert().Interpreter(model_path=str(paths[form])).get_tensor_details()
        assert not any(d["name"] for d in details), form
    # The int8 file, packed again without sharing: the zero points, one int64 per channel scale,
    # then take their full room, and answer the same.
    from tensorflow.lite.tools import flatbuffer_utils

    unshared = bytes(flatbuffer_utils.convert_object_to_bytearray(flatbuffer_utils.read_model(str(paths["int8"]))))
    scales = sum(
        len(d["quantization_parameters"]["scales"])
        for d in _litert().Interpreter(model_path=str(paths["int8"])).get_tensor_details()
    )
    assert len(unshared) - paths["int8"].stat().st_size > 0.8 * 8 * scales
    (tmp_path / "unshared.tflite").write_bytes(unshared)
    assert np.array_equal(Predictor(tmp_path / "unshared.tflite").p_dog(x), Predictor(paths["int8"]).p_dog(x))


@pytest.mark.parametrize("form", ["int8", "int4"])
def test_predict_with_tflite_needs_no_tensorflow(models, tmp_path, form):
    from dogs_vs_cats.images import load_image
    from dogs_vs_cats.inference import Predictor

    paths, _ = models
    (tmp_path / "a.jpg").write_bytes(image_bytes("dog", (120, 90)))
    # A `tensorflow` that explodes on import: the runtime-only path must never touch it.
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker/tensorflow.py").write_text("raise ImportError('TensorFlow is not installed on this device')\n")
    (tmp_path / "blocker/keras.py").write_text("raise ImportError('Keras is not installed on this device')\n")
    env = project_env({"PYTHONPATH": str(tmp_path / "blocker")})
    out = tmp_path / "p.csv"
    code = (
        "import sys; from dogs_vs_cats.cli import main; rc = main(sys.argv[1:]); "
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None; sys.exit(rc)"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "predict",
            "--model",
            str(paths[form]),
            str(tmp_path / "a.jpg"),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(open(out)))
    expected = Predictor(paths[form]).p_dog_one(load_image((tmp_path / "a.jpg").read_bytes(), 48))
    assert float(row["p_dog"]) == pytest.approx(expected, abs=1e-6)


def _serve(model, options: list[str], env: dict | None = None):
    """`dogs-vs-cats serve` on a free port, once it accepts connections: (port, process)."""
    (port,) = free_ports()
    proc = subprocess.Popen(
        [str(BIN / "dogs-vs-cats"), "serve", "--model", str(model), "--port", str(port), *options],
        env=project_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)


@pytest.fixture(scope="module")
def service(models):
    paths, _ = models
    port, proc = _serve(
        paths["int8"],
        ["--max-bytes", "1000000", "--max-pixels", "4000000", "--timeout", "3", "--max-connections", "10"],
    )
    yield port, proc.pid
    proc.terminate()
    proc.wait(timeout=10)


def request(service, method, path, body=None, headers=None):
    port = service[0] if isinstance(service, tuple) else service
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


def test_service_answers_p_dog_and_label(service, models):
    from dogs_vs_cats.images import load_image
    from dogs_vs_cats.inference import Predictor

    paths, _ = models
    img = image_bytes("dog", (100, 80), seed=3)
    status, body = request(service, "POST", "/predict", img)
    assert status == 200
    expected = Predictor(paths["int8"]).p_dog_one(load_image(img, 48))
    assert body["p_dog"] == pytest.approx(expected, abs=1e-5)
    assert body["label"] == ("dog" if expected >= 0.5 else "cat")
    assert request(service, "GET", "/health")[0] == 200


@pytest.mark.parametrize(
    "method, path, body, status, words",
    [
        ("POST", "/predict", b"this is text", 415, "not a decodable image"),
        ("POST", "/predict", b"", 400, "empty body"),
        ("POST", "/predict", b"x" * 1_000_001, 413, "limit is 1000000 bytes"),
        ("GET", "/predict", None, 405, "use POST"),
        ("DELETE", "/predict", None, 405, "DELETE is not supported"),
        ("POST", "/elsewhere", b"x", 404, "no such path /elsewhere"),
    ],
)
def test_service_rejects_bad_requests_clearly(service, method, path, body, status, words):
    got, data = request(service, method, path, body)
    assert got == status and words in data["error"]


def test_service_handles_concurrent_requests(service):
    images = [image_bytes("cat" if i % 2 else "dog", (64 + i, 48), seed=i) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: request(service, "POST", "/predict", b), images))
    assert all(status == 200 for status, _ in results)
    # Each answer belongs to its own image: the same image asked again alone gives the same answer.
    for img, (_, body) in list(zip(images, results))[:4]:
        assert request(service, "POST", "/predict", img)[1]["p_dog"] == body["p_dog"]


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_decompression_bomb_is_refused_from_its_header_in_bounded_memory_and_time(service):
    port, pid = service
    bomb = bomb_png(11_000)  # 121 million pixels, under Pillow's own bomb limit
    assert len(bomb) < 1_000_000
    request(service, "POST", "/predict", image_bytes("dog", (100, 80)))  # warm: the interpreter's first allocations
    before = _peak_rss_mb(pid)
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:  # four at once: the 3.9 GB
        results = list(pool.map(lambda _: request(service, "POST", "/predict", bomb), range(4)))
    assert time.monotonic() - start < 5
    for status, body in results:
        assert status == 413 and "121,000,000 pixels" in body["error"]
        assert "the limit is 4,000,000 pixels" in body["error"]
    assert _peak_rss_mb(pid) - before < 50  # decoded, the four would have needed gigabytes
    assert request(service, "POST", "/predict", image_bytes("cat", (100, 80)))[0] == 200


def test_a_client_that_trickles_its_request_is_cut_off_at_the_timeout(service):
    port, _ = service
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    start = time.monotonic()
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    answer = b""
    try:
        for _ in range(30):  # a byte a quarter second: each read is quick, the whole request never ends
            sock.sendall(b"x")
            time.sleep(0.25)
    except OSError:
        pass  # the service closed the connection
    try:
        answer = sock.recv(4096)
    except OSError:
        pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"within 3 s" in answer, answer
    assert time.monotonic() - start < 3 + 2.5


def test_a_client_that_sends_half_its_headers_and_stops_is_cut_at_the_timeout(service):
    port, _ = service
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    start = time.monotonic()
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    answer = sock.recv(4096)  # answered and closed by the service, not by this client's own timeout
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"within 3 s" in answer, answer
    assert time.monotonic() - start < 3 + 2.5


def test_idle_and_trickling_connections_hold_no_request_slot(service):
    # waitress reads requests in its event loop: ten silent connections (the service's
    # --max-connections) leave every slot free, and a photo is answered at once.
    port, _ = service
    idle = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(10)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        assert request(service, "POST", "/predict", image_bytes("dog", (100, 80)))[0] == 200
        assert time.monotonic() - start < 1
    finally:
        for s in idle:
            s.close()


@contextlib.contextmanager
def _in_process(paths, **options):
    """`serve` in this process, serving from a thread while the block runs: (port, server)."""
    import threading

    from dogs_vs_cats.commands.serve import make_server

    (port,) = free_ports()
    server = make_server(str(paths["int8"]), "127.0.0.1", port, **options)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        yield port, server
    finally:
        server.close()
        server.task_dispatcher.shutdown()


def test_requests_past_the_slots_get_503_and_a_request_waiting_for_the_model_is_not_cut(models):
    paths, _ = models
    photo = image_bytes("dog", (100, 80))
    with _in_process(paths, max_bytes=100_000, timeout_s=1, max_connections=3) as (port, server):
        with ThreadPoolExecutor(3) as pool:
            with server.application.model_lock:  # the model is busy: complete requests wait for it
                waiting = [pool.submit(post, port, photo) for _ in range(3)]
                time.sleep(0.5)
                status, body = post(port, photo)
                assert status == 503 and "busy" in body["error"]
                time.sleep(2)  # past the 1 s deadline: the three have arrived, so they are not cut
            assert [w.result()[0] for w in waiting] == [200, 200, 200]
        assert post(port, photo)[0] == 200  # and the service recovers


def test_a_concurrent_mix_of_photos_and_hostile_requests_answers_every_photo_right(service, models):
    from dogs_vs_cats.images import load_image
    from dogs_vs_cats.inference import Predictor

    paths, _ = models
    good = [image_bytes("cat" if i % 2 else "dog", (90 + i, 70), seed=i) for i in range(8)]
    hostile = hostile_bodies(good[0], max_pixels=4_000_000)
    records = load_mix(service[0], good, hostile, max_bytes=1_000_000, clients=6, per_client=10, hostile_every=2)
    assert {r["kind"] for r in records} == set(EXPECTED_STATUS)  # every hostile kind was sent
    for r in records:
        assert r["status"] == EXPECTED_STATUS[r["kind"]], r
    predictor = Predictor(paths["int8"])
    expected = [predictor.p_dog_one(load_image(img, 48)) for img in good]
    for r in records:
        if r["kind"] == "good":  # each answer is its own photo's, whatever ran beside it
            assert r["p_dog"] == pytest.approx(expected[r["photo"]], abs=1e-5)


def test_a_slowloris_of_64_clients_cuts_each_at_the_timeout_and_a_photo_is_answered_meanwhile(models):
    import threading

    paths, _ = models
    with _in_process(paths, max_bytes=100_000, timeout_s=2, max_connections=32) as (port, server):
        answers, cut_after = [], []

        def trickle():
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            start = time.monotonic()
            try:
                for byte in b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n":
                    sock.sendall(bytes([byte]))
                    time.sleep(0.25)
            except OSError:
                pass  # cut by the service
            try:
                answers.append(sock.recv(4096))
            except OSError:
                answers.append(b"")
            cut_after.append(time.monotonic() - start)
            sock.close()

        slow = [threading.Thread(target=trickle) for _ in range(64)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert post(port, image_bytes("cat", (100, 80)))[0] == 200
        assert time.monotonic() - start < 1
        for t in slow:
            t.join()
        assert len(answers) == 64 and all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
        assert max(cut_after) < 2 + 2.0  # the deadline, and the once-a-second check


def test_a_photo_past_the_byte_limit_gets_its_413_while_the_client_is_still_sending_it(models):
    # Refused from its header, the body is never kept; closed outright, the connection would be reset
    # under the client's feet and it would see "connection reset" instead of the 413.
    paths, _ = models
    with _in_process(paths, max_bytes=100_000, timeout_s=5) as (port, server):
        for size in [4_000_000] * 8:
            status, body = post(port, b"x" * size)
            assert status == 413 and "limit is 100000 bytes" in body["error"]
        assert post(port, image_bytes("dog", (100, 80)))[0] == 200


def test_a_client_that_keeps_sending_after_its_413_is_cut_at_the_timeout(models):
    paths, _ = models
    with _in_process(paths, max_bytes=1000, timeout_s=1) as (port, server):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # the answer, then the service's end of sending
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"limit is 1000 bytes" in answer, answer
        start = time.monotonic()
        with pytest.raises(OSError):  # what it still sends is read and dropped, until the deadline
            while time.monotonic() - start < 10:
                sock.sendall(b"x" * 65536)
                time.sleep(0.01)
        assert time.monotonic() - start < 1 + 2.0  # the deadline, and the once-a-second check
        sock.close()


def test_a_header_or_body_past_its_limit_is_refused_in_one_json_line(models):
    paths, _ = models
    with _in_process(paths, max_bytes=1000, timeout_s=5) as (port, server):
        status, body = post(port, b"x" * 5000)
        assert status == 413 and "limit is 1000 bytes" in body["error"]
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:  # the service closes with the rest of the headers unread
            pass
        sock.close()
        assert b" 431 " in answer.split(b"\r\n")[0] and b'"error": "the headers are too large' in answer, answer


def test_a_burst_of_connections_waits_in_the_accept_queue_instead_of_being_dropped(models):
    from dogs_vs_cats.commands.serve import make_server

    paths, _ = models
    (port,) = free_ports()
    # Not serving yet: every connection must wait in the kernel's queue. At a queue of 5 the sixth
    # and later handshakes are dropped, and their connects time out.
    server = make_server(str(paths["int8"]), "127.0.0.1", port, max_bytes=1000, max_connections=32)
    sockets = []
    try:
        for _ in range(40):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
    finally:
        for s in sockets:
            s.close()
        server.close()
        server.task_dispatcher.shutdown()
    assert len(sockets) == 40


def test_serve_with_tflite_needs_no_tensorflow(models, tmp_path):
    paths, _ = models
    (tmp_path / "blocker").mkdir()
    for name in ("tensorflow", "keras"):  # each leaves a mark if anything tries to import it
        (tmp_path / f"blocker/{name}.py").write_text(
            f"open({str(tmp_path / name)!r} + '.imported', 'w').close()\n"
            f"raise ImportError('{name} is not installed on this device')\n"
        )
    port, proc = _serve(paths["int8"], [], {"PYTHONPATH": str(tmp_path / "blocker")})
    try:
        status, body = request(port, "POST", "/predict", image_bytes("dog", (120, 90)))
        assert status == 200 and 0 <= body["p_dog"] <= 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not list(tmp_path.glob("*.imported")), "serve imported TensorFlow or Keras"
