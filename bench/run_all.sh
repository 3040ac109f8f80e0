#!/usr/bin/env bash
# All CPU benchmarks: on a 1,000,000-track matching sample (cached in bench/.cache), then
# the whole pipeline on 10,000,000 tracks (bench.scale; SCALE_TRACKS=5000000 where disk
# is short: the 10M file takes 1.3 GB).
# Run them on a quiet machine: the numbers are wall-clock times.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
echo "== make_dataset.py --normalize vs ROOT's bare read"
bash bench/bench_make_dataset.sh
DS=bench/.cache/raw1M  # raw features: network 1, as the targets assume
[ -f ${DS}_train_data.npy ] || $PY make_dataset.py -f bench/.cache/matching_1M.root \
    --output $DS --track matching > /dev/null
echo "== one trial's training throughput (network 1, l0=32, batch 2048)"
$PY -m bench.bench_training throughput $DS
echo "== full search: training.py -n 4 --epochs 10"
$PY -m bench.bench_training search $DS
echo "== inference.py on 1,000,000 tracks"
$PY -m bench.bench_inference --cache bench/.cache/inference
echo "== the default figures, one by one in one process (bench.bench_figures)"
$PY -m bench.bench_figures
echo "== classifier quality of the default commands (bench/quality.sh)"
bash bench/quality.sh
echo "== the whole pipeline on 10,000,000 tracks against ROOT's bare read (bench.scale)"
$PY -m bench.scale --tracks ${SCALE_TRACKS:-10000000}
