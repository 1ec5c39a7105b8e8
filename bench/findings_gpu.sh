#!/usr/bin/env bash
# The findings report at full power on one GPU, in (we aim) under 10 minutes: both families (CheXpert and faces)
# on the synthetic `findings` world, at least 10 confirmation seeds (the power rule may ask more, up to 20), many
# runs at once on the one device: as many as its free memory allows (GIB_PER_RUN each), at most one per core.
# Writes OUT/findings_gpu.csv: one row per claim (verdict, the arms it rests on), with the seeds and seconds.
#
#   bash bench/findings_gpu.sh [OUT]            # the real thing, on a GPU (OUT: reports/findings_gpu)
#   bash bench/findings_gpu.sh OUT --smoke      # seconds on a CPU: the smoke preset, CheXpert, 1 + 2 seeds
#
# Environment: WORLD (findings), JOBS (runs at a time; default from the GPU's memory), GIB_PER_RUN (2),
# RUNS (the runs folder; default OUT/runs: finished runs there are kept and skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-reports/findings_gpu}; mode=${2:-}
py=${PYTHON:-python}; [ -x .venv/bin/python ] && py=${PYTHON:-.venv/bin/python}
runs=${RUNS:-$out/runs}; world=${WORLD:-findings}
mkdir -p "$out"
if [ "$mode" = "--smoke" ]; then
  args=(-p families chexpert -p preset smoke -p tune_seeds 1 -p seeds 2 -p max_seeds 2 -p resamples 50)
  world=${WORLD:-default}; jobs=${JOBS:-2}
else
  [ -n "$mode" ] && { echo "findings_gpu.sh: unknown option $mode (use --smoke or nothing)" >&2; exit 2; }
  jobs=${JOBS:-$("$py" - <<'PY'
import os, torch
if not torch.cuda.is_available():
    raise SystemExit('findings_gpu.sh: no GPU is visible; run it on a GPU machine, or pass --smoke on a CPU.')
free, _ = torch.cuda.mem_get_info()
print(max(1, min(os.cpu_count() or 1, int(free / 2**30 // float(os.environ.get('GIB_PER_RUN', 2))))))
PY
)}
  args=(-p families chexpert,faces -p preset lean -p tune_seeds 2 -p seeds 10 -p max_seeds 20)
fi
echo "findings_gpu.sh: world $world, $jobs run(s) at a time, runs in $runs"
start=$(date +%s)
"$py" -m papermill nbs/findings.ipynb "$out/findings.ipynb" --log-level WARNING \
  -r runs_dir "$runs" -r world "$world" -p jobs "$jobs" "${args[@]}"
wall=$(( $(date +%s) - start ))
"$py" - "$runs/verdicts.csv" "$out/findings_gpu.csv" "$wall" "$jobs" <<'PY'
import sys, pandas as pd
v = pd.read_csv(sys.argv[1]).assign(wall_s=int(sys.argv[3]), jobs=int(sys.argv[4]))
tmp = sys.argv[2] + '.part'; v.to_csv(tmp, index=False)
import os; os.replace(tmp, sys.argv[2])   # never a half-written table
print(v[['finding', 'verdict', 'seeds']].to_string(index=False)); print(f'{sys.argv[3]} s in all: {sys.argv[2]}')
PY
