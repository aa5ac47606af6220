"""Stage `evaluate`: accuracy, log loss and ROC AUC on the validation and holdout sets, and the
pictures: the holdout's confusion matrix and ROC curve, and the first member's training curves.

With several ensemble members it scores each member on the holdout too, and how far they spread:
how much one seed's draw moves the figures, beside what combining them gives.

The holdout set is touched by nothing else in the pipeline (the temperature is
fitted on validation), so its figures are the honest ones.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from .. import figures
from ..common import scores, write_csv, write_json
from ..inference import Predictor, predict_records
from ..params import Params
from ..paths import EVAL_METRICS, MODEL, TRAIN_CURVES, Member, prepared
from ..paths import EVAL_PLOTS as PLOTS


def _curve_rows(a: np.ndarray, b: np.ndarray, max_points: int = 400):
    idx = np.unique(np.linspace(0, len(a) - 1, min(len(a), max_points)).round().astype(int))
    return [(round(float(a[i]), 5), round(float(b[i]), 5)) for i in idx]


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, lowest and highest of the members' figures."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(v.mean()), 4),
        "sd": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0,
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
    }


def run(params: Params) -> None:
    predictor = Predictor(MODEL)
    result = {}
    for key in ("holdout", "val"):
        p, y, _ = predict_records(predictor, prepared(key))
        s = scores(p, y)
        # What `dvc metrics show` lists: the scores that change only when the model does.
        result[key] = {k: s[k] for k in ("accuracy", "log_loss", "roc_auc") if key == "holdout" or k != "roc_auc"}
        if key == "holdout":
            holdout = (p, y)

    p, y = holdout
    classes = np.array(["cat", "dog"])
    write_csv(PLOTS / "confusion.csv", ["actual", "predicted"], zip(classes[y], classes[(p >= 0.5).astype(int)]))
    figures.confusion_matrix(y, p, PLOTS / "confusion.png")
    if len(set(y.tolist())) == 2:
        fpr, tpr, _ = skm.roc_curve(y, p)
        figures.roc_curve(fpr, tpr, result["holdout"]["roc_auc"], PLOTS / "roc.png")
        precision, recall, _ = skm.precision_recall_curve(y, p)
        write_csv(PLOTS / "roc.csv", ["fpr", "tpr"], _curve_rows(fpr, tpr))
        write_csv(PLOTS / "precision_recall.csv", ["recall", "precision"], _curve_rows(recall[::-1], precision[::-1]))
    else:
        figures.roc_curve(np.zeros(0), np.zeros(0), None, PLOTS / "roc.png")
        write_csv(PLOTS / "roc.csv", ["fpr", "tpr"], [])
        write_csv(PLOTS / "precision_recall.csv", ["recall", "precision"], [])
    seeds = params.ensemble.seeds
    if len(seeds) > 1:
        members = {}
        for seed in seeds:
            s = scores(*predict_records(Predictor(Member(seed).model), prepared("holdout"))[:2])
            members[str(seed)] = {k: s[k] for k in ("accuracy", "log_loss")}
        result["members"] = members
        result["spread"] = {k: spread([m[k] for m in members.values()]) for k in ("accuracy", "log_loss")}
    write_json(EVAL_METRICS, result)
    # The training curves are drawn here, not by `train`, so a change to a picture re-runs no training.
    first = Member(seeds[0]).teacher_run
    figures.training_curves(first.log, first.val_log, TRAIN_CURVES)
    h = result["holdout"]
    print(f"evaluate: holdout accuracy {h['accuracy']}, log loss {h['log_loss']}, ROC AUC {h['roc_auc']}")
    if "spread" in result:
        a, ll = result["spread"]["accuracy"], result["spread"]["log_loss"]
        print(
            f"evaluate: the {len(seeds)} members alone: accuracy {a['mean']} (sd {a['sd']}, {a['min']}-{a['max']}), "
            f"log loss {ll['mean']} (sd {ll['sd']}, {ll['min']}-{ll['max']})"
        )
