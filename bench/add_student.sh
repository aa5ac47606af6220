#!/usr/bin/env bash
# Add a student to a kept bench/accuracy.py run whose teacher has already trained, without training
# the teacher again: how the FixMatch result files were made (their notes say so).
#
#   SHARED=../shared/kaggle-large/dogs-vs-cats-redux-kernels-edition \
#     bash bench/add_student.sh KEEPDIR "run conditions" [KEY=VALUE ...]
#
# It brings the kept project's code, dvc.yaml and params.yaml up to this checkout's (keeping the
# run's ensemble.seeds), switches unlabelled on with the KEY=VALUE overrides, marks download, split,
# prepare and train done with `dvc commit` (their code's behaviour is unchanged: the default's
# re-record is identical), and lets `bench/accuracy.py --resume` run the student and what follows.
set -euo pipefail
keep=$1; note=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
p=$keep/project
cd "$root"
rm -rf "$p/src" && cp -r src "$p/src" && cp dvc.yaml "$p/dvc.yaml"
seeds=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['ensemble']['seeds'])" "$p/params.yaml")
cp params.yaml "$p/params.yaml"
.venv/bin/python - "$p" "$seeds" "$@" <<'PY'
import sys
from pathlib import Path

import yaml

sys.path.insert(0, "bench")
from benchlib import overrides, set_params

project, seeds, *sets = sys.argv[1:]
set_params(Path(project), **{"ensemble.seeds": yaml.safe_load(seeds), "unlabelled.enabled": True, **overrides(sets)})
PY
rm -rf "$p/data/pseudo" "$p/data/student_state"
(cd "$p" && PYTHONPATH="$p/src" "$root/.venv/bin/dvc" commit -f download split prepare train >/dev/null)
sets=(--set unlabelled.enabled=true)
for kv in "$@"; do sets+=(--set "$kv"); done
.venv/bin/python bench/accuracy.py --shared "$SHARED" --keep "$keep" --resume --note "$note" "${sets[@]}"
