"""Stage `edge`: the one net `export` ships (data/edge/model.keras).

The ensemble's model costs its members' sum at every prediction, and an edge device runs one
SqueezeNet. By default that net is the member with the lowest validation log loss
(`metrics/ensemble.json`), copied. With `edge.distil` (two or more members) that member goes on
learning for `edge.epochs` to answer as the whole ensemble does (distillation.py), on the
training photos and, with `edge.test_photos`, on the competition's test photos too: their pixels
only, as the ensemble answers them, never a label. Validation only monitors and fits the
temperature, as for every net; the holdout stays `evaluate`'s and `export`'s.
"""

from __future__ import annotations

import json
import shutil

from ..callbacks import write_logs
from ..common import UserError, atomic_path, log, write_json
from ..distillation import Distillation
from ..params import Params, distilled
from ..paths import EDGE_MODEL, EDGE_RUN, ENSEMBLE_METRICS, MODEL, Member, prepared
from ..records import count_records
from ..trainer import train


def best_member(params: Params) -> int:
    """The seed of the member with the lowest validation log loss, as the `ensemble` stage measured it
    (the first in ensemble.seeds on a tie)."""
    seeds = list(params.ensemble.seeds)
    try:
        val = json.loads(ENSEMBLE_METRICS.read_text())["val"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{ENSEMBLE_METRICS}: missing or unreadable; run `dvc repro ensemble` first") from None
    if sorted(int(s) for s in val) != sorted(seeds):
        raise UserError(
            f"{ENSEMBLE_METRICS}: scores members {sorted(int(s) for s in val)}, not ensemble.seeds = {seeds}; "
            "run `dvc repro ensemble` first"
        )
    return min(seeds, key=lambda s: (val[str(s)]["log_loss"], seeds.index(s)))


def run(params: Params, callbacks: tuple = ()) -> None:
    """The stage. `callbacks` are extra Keras callbacks for every distillation epoch: hooks for benchmarks."""
    seed = best_member(params)
    start = Member(seed).model
    if not start.is_file():
        raise UserError(f"{start}: missing; run `dvc repro student@{seed}` (or `dvc repro`) first")
    if not params.edge.distil:
        with atomic_path(EDGE_MODEL, suffix=".keras") as tmp:
            shutil.copyfile(start, tmp)
        write_logs(EDGE_RUN, [])
        write_json(EDGE_RUN.metrics, {"distilled": False, "seed": seed, "model": str(start)})
        log(f"edge: {EDGE_MODEL} is member {seed}'s model, the lowest validation log loss")
        return
    if not MODEL.is_file():
        raise UserError(f"{MODEL}: missing; run `dvc repro ensemble` first")
    pool = count_records(prepared("test")) if params.edge.test_photos else 0
    if params.edge.test_photos and not pool:
        raise UserError(f"{prepared('test')}: holds no test photos to distil on; set edge.test_photos to false")
    log(
        f"edge: distilling {MODEL} into member {seed}'s net for {params.edge.epochs} epochs, on the training "
        f"photos{f' and {pool} test photos' if pool else ''}"
    )
    extra = {"distilled": True, "seed": seed, "test_photos": pool}
    train(distilled(params, seed), EDGE_RUN, callbacks, extra=extra, learner=Distillation(MODEL, start, pool))
