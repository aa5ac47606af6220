"""Stage `train`: SqueezeNet from scratch on the prepared, labelled training photos, once per
ensemble member (`train@SEED`, one per seed in `ensemble.seeds`).

Its model is the member's teacher: the `student` stage keeps it as it is unless `unlabelled` is
on, and then trains it on, on the test photos too. How a model is trained is in trainer.py,
which the student stage uses too.
"""

from __future__ import annotations

from ..params import Params
from ..paths import Member
from ..trainer import train


def run(params: Params, callbacks: tuple = ()) -> None:
    """The stage, for the member `params.train.seed`. `callbacks` are extra Keras callbacks for every
    epoch: hooks for benchmarks."""
    train(params, Member(params.train.seed).teacher_run, callbacks)
