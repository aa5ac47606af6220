"""The README's figures are the committed results': the headline, the results table, the model forms."""

from __future__ import annotations

import json
import re

from harness import ROOT

README = (ROOT / "README.md").read_text()


def _load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def _table(marker: str) -> list[list[str]]:
    """The rows (cells, markdown stripped) of the first table after `<!-- marker`."""
    lines = README[README.index(f"<!-- {marker}") :].splitlines()[1:]
    rows = []
    for line in lines[2:]:  # after the header and the --- line
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*`").strip() for c in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(re.match(r"[\d,.]+", cell).group().replace(",", ""))


def test_the_headline_is_the_recorded_default_run():
    ev, train, int8 = _load("metrics/eval.json"), _load("metrics/train.json"), _load("metrics/int8.json")
    result = _load("bench/results/accuracy-default.json")
    (row,) = _table("headline")
    accuracy, log_loss, auc, kaggle, training, int8_size = row
    assert accuracy == f"{ev['holdout']['accuracy']:.3f}"
    assert log_loss == f"{ev['holdout']['log_loss']:.3f}"
    assert auc == f"{ev['holdout']['roc_auc']:.3f}"
    assert training.startswith(f"{train['wall_s'] / 60:.1f} min on 2 cores of an AMD EPYC")
    assert _number(int8_size) == int8["bytes"]
    # The Kaggle score comes from the result file, which must be the run that metrics/ records.
    assert kaggle == f"{result['kaggle_log_loss']:.3f}"
    assert (result["holdout_accuracy"], result["holdout_log_loss"]) == (
        ev["holdout"]["accuracy"],
        ev["holdout"]["log_loss"],
    )
    assert result["train_wall_s"] == train["wall_s"] and result["overrides"] == {}


def test_each_results_row_is_its_result_file():
    rows = _table("results")
    assert len(rows) >= 2
    for name, accuracy, log_loss, kaggle, training, source in rows:
        result = _load(source)
        assert accuracy == f"{result['holdout_accuracy']:.3f}", name
        assert log_loss == f"{result['holdout_log_loss']:.3f}", name
        assert kaggle == f"{result['kaggle_log_loss']:.3f}", name
        assert training.startswith(f"{result['train_wall_s'] / 60:.1f} min"), name


def test_each_model_form_row_is_the_export_stages_report():
    forms = _load("metrics/export_forms.json")
    rows = {row[0].split()[0].lower(): row for row in _table("forms")}
    assert set(rows) == {"keras", "float32", "float16", "int8", "int4"}
    for form, (_, size, accuracy, log_loss, ms, source) in rows.items():
        assert source == "metrics/export_forms.json"
        assert _number(size) == forms[form]["bytes"], form
        assert accuracy == f"{forms[form]['accuracy']:.3f}" and log_loss == f"{forms[form]['log_loss']:.3f}", form
        if form != "keras":  # the Keras model is timed on all threads only
            assert _number(ms) == round(forms[form]["latency_ms"]["one_thread"], 1), form


def test_the_readmes_metrics_table_is_what_dvc_metrics_show_prints_for_the_committed_metrics():
    import subprocess

    from harness import BIN, project_env

    shown = subprocess.run(
        [str(BIN / "dvc"), "metrics", "show"], cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    lines = [line.rstrip() for line in shown.stdout.splitlines() if line.strip()]
    assert len(lines) == 4 and max(map(len, lines)) <= 160
    readme = [line.strip() for line in README.splitlines()]
    assert all(line.strip() in readme for line in lines), lines


def test_the_record_quotes_the_current_default_as_its_result_file_has_it():
    result = _load("bench/results/accuracy-default.json")
    docs = (ROOT / "docs/experiments.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| mixed stream, 120 epochs"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == [
        f"{result['holdout_accuracy']:.3f}",
        f"{result['holdout_log_loss']:.3f}",
        f"{result['holdout_roc_auc']:.3f}",
    ]
    assert cells[4] == f"{result['val_accuracy']:.3f} / {result['val_log_loss']:.3f}"
    assert cells[5] == f"{result['kaggle_log_loss']:.3f}" and cells[6] == f"{result['train_wall_s'] / 60:.1f} min"


def test_the_full_data_row_is_its_result_file():
    ((name, accuracy, log_loss, kaggle, training, source),) = _table("full")
    result = _load(source)
    assert result["overrides"]["split.n_train"] == 13200 and "kaggle-large" in result["competition"]
    assert accuracy == f"{result['holdout_accuracy']:.3f}" and log_loss == f"{result['holdout_log_loss']:.3f}"
    assert kaggle == f"{result['kaggle_log_loss']:.3f}"
    assert training.startswith(f"{result['train_wall_s'] / 60:.1f} min")
    command = README[README.index("## Scaling") :].split("```bash\n")[1].split("\n```")[0]
    # The README's line sets what the run overrode, but for the split's sizes it kept at their defaults.
    import yaml

    split = yaml.safe_load((ROOT / "params.yaml").read_text())["split"]
    kept = {f"split.{k}": split[k] for k in ("n_val", "n_holdout")}
    assert all(result["overrides"].get(k, v) == v for k, v in kept.items())
    overridden = {k: v for k, v in result["overrides"].items() if k not in kept}
    assert command.split() == ["dvc", "exp", "run"] + [w for k, v in overridden.items() for w in ("-S", f"{k}={v}")]
