"""`dogs-vs-cats STAGE`: the single entry point every dvc.yaml stage calls."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .common import UserError
from .paths import MODEL

STAGES = ("download", "split", "prepare", "train", "pseudolabel", "student", "evaluate", "submission", "export")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogs-vs-cats",
        description="SqueezeNet on Kaggle's Dogs vs. Cats Redux: the stages `dvc repro` runs, plus tools.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the `{stage}` stage (normally via `dvc repro`)")

    p = sub.add_parser("predict", help="write file,p_dog for images, from a .keras or .tflite model")
    p.add_argument("--model", default=str(MODEL), help="model file (.keras or .tflite)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")

    s = sub.add_parser("submit", help="check data/submission.csv and upload it to Kaggle")
    s.add_argument("--file", default="data/submission.csv")
    s.add_argument("--message", default=None, help="submission description (default: git revision and changed params)")
    s.add_argument("--timeout", type=float, default=600, help="seconds to wait for the score (default 600)")

    v = sub.add_parser("serve", help="HTTP service: POST an image, get {p_dog, label}")
    v.add_argument("--model", required=True, help="model file (.tflite or .keras)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8080)
    v.add_argument("--max-bytes", type=int, default=10 << 20, help="largest accepted upload (default 10 MiB)")
    v.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest decoded photo, in pixels (default 40 million)"
    )
    v.add_argument("--timeout", type=float, default=20.0, help="seconds a client has to send a request (default 20)")
    v.add_argument("--max-connections", type=int, default=32, help="connections served at once (default 32)")
    return parser


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter (CUDA probing, absl) kept off stderr.

    TF_CPP_MIN_LOG_LEVEL does not silence those lines, and they bury our one-line
    messages. The chatter is replayed if the import itself fails.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing prints its own errors; do it here
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    needs_tf = args.command in STAGES or not str(getattr(args, "model", ".tflite")).endswith(".tflite")
    if needs_tf and args.command not in ("download", "split", "submit"):
        try:
            _import_tensorflow_quietly()
        except ImportError:
            pass  # the command reports what is missing in its own words
    try:
        if args.command == "predict":
            from . import predict

            predict.run(args.model, args.images, args.out)
        elif args.command == "serve":
            from . import serve

            serve.run(
                args.model, args.host, args.port, args.max_bytes, args.max_pixels, args.timeout, args.max_connections
            )
        else:
            from . import params as params_module

            params = params_module.load(args.params)
            if args.command == "submit":
                from . import submit

                submit.run(params, args.file, args.message, args.timeout, args.params)
            else:
                importlib.import_module(f".{args.command}", __package__).run(params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
