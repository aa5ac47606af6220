"""Stage `ensemble`: the members' models, one per seed in `ensemble.seeds`, combined into the model
that `evaluate` and `submission` read (data/model/model.keras). Each member's validation scores go
to metrics/ensemble.json, from which the `edge` stage picks the net `export` ships.

Several nets trained alike but from different seeds make different mistakes, and the competition
scores log loss, which punishes a confident mistake most: averaging their log-odds (a geometric
mean of their odds) softens exactly those. The mean is then recalibrated by one temperature fitted
on validation, as each member was: averaging makes answers less sure than any member's alone.

With one member the model is that member's, copied as it is, so the default pipeline costs nothing
more. Only validation is read; the holdout stays `evaluate`'s.
"""

from __future__ import annotations

import shutil

import numpy as np

from ..calibrate import fit_temperature
from ..common import P_FLOOR, UserError, atomic_path, log, scores, write_json
from ..inference import Predictor, predict_records
from ..params import Params
from ..paths import ENSEMBLE_METRICS, MODEL, Member, prepared


def log_odds(p: np.ndarray) -> np.ndarray:
    """log P(dog) - log P(cat), clipped as the LogitMean layer clips."""
    p = np.clip(p, P_FLOOR, 1 - P_FLOOR)
    return np.log(p) - np.log1p(-p)


def _brief(s: dict) -> dict:
    return {k: s[k] for k in ("accuracy", "log_loss")}


def combine(paths: list, seeds: list[int], temperature: float, image_size: int):
    """One Keras model: every member on the same photo, their log-odds averaged, divided by `temperature`."""
    import keras

    from ..layers import LogitMean

    members = []
    for seed, path in zip(seeds, paths):
        net = keras.models.load_model(path, compile=False)
        net.name = f"member_{seed}"  # nested models need names of their own
        members.append(net)
    image = keras.Input((image_size, image_size, 3), name="image")
    p = LogitMean(temperature, name="logit_mean", dtype="float32")([m(image) for m in members])
    return keras.Model(image, p, name="ensemble")


def run(params: Params) -> None:
    seeds = list(params.ensemble.seeds)
    paths = [Member(s).model for s in seeds]
    for seed, path in zip(seeds, paths):
        if not path.is_file():
            raise UserError(f"{path}: missing; run `dvc repro student@{seed}` (or `dvc repro`) first")

    val = {}
    for seed, path in zip(seeds, paths):
        p, y, _ = predict_records(Predictor(path), prepared("val"))
        val[seed] = (p, y)
    member_scores = {str(s): _brief(scores(*val[s])) for s in seeds}
    report = {"members": len(seeds), "seeds": seeds, "val": member_scores}

    if len(seeds) == 1:
        with atomic_path(MODEL, suffix=".keras") as tmp:
            shutil.copyfile(paths[0], tmp)
        write_json(ENSEMBLE_METRICS, report)
        log(f"ensemble: one member (seed {seeds[0]}); {MODEL} is its model")
        return

    y = val[seeds[0]][1]
    gap = np.mean([log_odds(val[s][0]) for s in seeds], axis=0)
    temperature = fit_temperature(np.stack([np.zeros_like(gap), gap], axis=-1)[None], y)
    model = combine(paths, seeds, temperature, params.prepare.image_size)
    with atomic_path(MODEL, suffix=".keras") as tmp:
        model.save(tmp)
    p, _, _ = predict_records(Predictor(MODEL), prepared("val"))
    combined = scores(p, y)
    report.update(
        temperature=round(temperature, 4),
        val_ensemble=_brief(combined),
    )
    write_json(ENSEMBLE_METRICS, report)
    log(
        f"ensemble: {len(seeds)} members (seeds {', '.join(map(str, seeds))}), temperature {temperature:.3f}; "
        f"validation log loss {combined['log_loss']} against the members' "
        f"{', '.join(str(member_scores[str(s)]['log_loss']) for s in seeds)}"
    )
