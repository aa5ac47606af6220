"""The pipeline's stages, one module each, named as in `dvc.yaml`; each is a `run(params)`.

`dvc.yaml` runs them through `python -m dogs_vs_cats.stages STAGE`: this file, which carries no
command's options, so an edit to `predict`, `serve` or `submit` re-runs no stage. A stage
imports the library (the modules beside this folder), never another stage or a command.
"""

from __future__ import annotations

import importlib
import os
import sys

STAGES = ("download", "split", "prepare", "train", "student", "ensemble", "edge", "evaluate", "submission", "export")
# One run per ensemble member (dvc.yaml: foreach over ensemble.seeds, `STAGE --seed SEED`).
MEMBER_STAGES = ("train", "student")
# The stages that neither read nor write a model start without TensorFlow.
WITHOUT_TENSORFLOW = ("download", "split")


def import_tensorflow_quietly() -> None:
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


def run(stage: str, params_path: str = "params.yaml", seed: int | None = None) -> None:
    """Validate params.yaml, then run one stage: for a member's stage, the member `seed`'s run, or every
    member's in turn when no seed is given. Errors the user can fix are raised as UserError."""
    from .. import params as params_module

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    params = params_module.load(params_path)
    if seed is not None and stage not in MEMBER_STAGES:
        raise params_module.ParamError(f"--seed: only {' and '.join(MEMBER_STAGES)} run per member, not {stage}")
    members = [params_module.for_member(params, s) for s in ([seed] if seed is not None else params.ensemble.seeds)]
    if stage not in WITHOUT_TENSORFLOW:
        try:
            import_tensorflow_quietly()
        except ImportError:
            pass  # the stage reports what is missing in its own words
    module = importlib.import_module(f".{stage}", __name__)
    for p in members if stage in MEMBER_STAGES else [params]:
        module.run(p)


def main(argv: list[str] | None = None) -> int:
    """`python -m dogs_vs_cats.stages STAGE [--seed SEED] [--params FILE]`: what each dvc.yaml stage runs."""
    import argparse

    from ..common import UserError

    parser = argparse.ArgumentParser(prog="python -m dogs_vs_cats.stages", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--seed", type=int, default=None, help="the ensemble member (train, student); default: all")
    args = parser.parse_args(argv)
    try:
        run(args.stage, args.params, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
