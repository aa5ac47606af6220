"""Stage `train`: SqueezeNet from scratch on the prepared, labelled training photos.

Its model is the teacher: the `student` stage ships it as it is (data/model) unless
`unlabelled` is on, and then trains it on, on the test photos too. How a model is
trained is in trainer.py, which the student stage uses too.
"""

from __future__ import annotations

from ..params import Params
from ..paths import TEACHER_RUN
from ..trainer import train


def run(params: Params, callbacks: tuple = ()) -> None:
    """The stage. `callbacks` are extra Keras callbacks for every epoch: hooks for benchmarks."""
    train(params, TEACHER_RUN, callbacks)
