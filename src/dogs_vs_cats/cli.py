"""`dogs-vs-cats`: the one command line, for people. Its options for `predict`, `serve` and `submit`
live here and nowhere else; `dogs-vs-cats STAGE` runs a stage as `dvc repro` does (stages/), and no
stage depends on this file, so editing an option re-runs nothing."""

from __future__ import annotations

import argparse
import os
import sys

from .common import UserError
from .paths import MODEL
from .stages import MEMBER_STAGES, STAGES, import_tensorflow_quietly


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogs-vs-cats",
        description="SqueezeNet on Kaggle's Dogs vs. Cats Redux: the stages `dvc repro` runs, plus tools.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        st = sub.add_parser(stage, help=f"run the `{stage}` stage (normally via `dvc repro`)")
        if stage in MEMBER_STAGES:
            st.add_argument("--seed", type=int, default=None, help="one ensemble member (default: every member)")

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
    v.add_argument(
        "--max-decode-mb",
        type=int,
        default=64,
        help="most memory one photo's decode may take, whatever its mode (default 64 MiB)",
    )
    v.add_argument("--timeout", type=float, default=20.0, help="seconds a client has to send a request (default 20)")
    v.add_argument(
        "--max-connections",
        type=int,
        default=32,
        help="requests in the service at once, 503 past them; open connections up to 8 times this (default 32)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    try:
        if args.command in STAGES:
            from . import stages

            stages.run(args.command, args.params, getattr(args, "seed", None))
        elif args.command == "predict":
            from .commands import predict

            if not args.model.endswith(".tflite"):
                _tensorflow()
            predict.run(model=args.model, inputs=args.images, out=args.out)
        elif args.command == "serve":
            from .commands import serve

            if not args.model.endswith(".tflite"):
                _tensorflow()
            serve.run(
                model=args.model,
                host=args.host,
                port=args.port,
                max_bytes=args.max_bytes,
                max_pixels=args.max_pixels,
                max_decode_bytes=args.max_decode_mb << 20,
                timeout_s=args.timeout,
                max_connections=args.max_connections,
            )
        else:
            from . import params as params_module
            from .commands import submit

            submit.run(
                params_module.load(args.params),
                file=args.file,
                message=args.message,
                timeout_s=args.timeout,
                params_path=args.params,
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _tensorflow() -> None:
    try:
        import_tensorflow_quietly()
    except ImportError:
        pass  # the command reports what is missing in its own words
