#!/usr/bin/env bash
# Classifier quality of the default commands on make_sample's 1,000,000-track samples,
# matching and forward: the network (float and INT8), the gradient-boosted-trees
# baseline and the generator's known optimum, with the search's wall time and the
# chosen network's multiply-adds per track.  Targets (README): AUC within 0.01 of the
# limit, ghost rejection at 99 % efficiency >= 90 % of the limit's and ahead of the
# baseline, the search < 3 min on 2 cores, INT8 within 0.005 AUC, <= ~20k MACs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=${CACHE:-bench/.cache/quality}
TRACKS=${TRACKS:-1000000}
mkdir -p "$CACHE"
for track in matching forward; do
    sample=$CACHE/${track}_train.root fresh=$CACHE/${track}_fresh.root
    [ -f "$sample" ] || $PY make_sample.py -o "$sample" --tracks "$TRACKS" --track $track --seed 11 > /dev/null
    [ -f "$fresh" ] || $PY make_sample.py -o "$fresh" --tracks 300000 --track $track --seed 12 > /dev/null
    $PY make_dataset.py -f "$sample" --output "$CACHE/ds_$track" --track $track > "$CACHE/ds_$track.log"
    # the default search, with the INT8 model and the baseline beside it
    /usr/bin/time -f "%e" -o "$CACHE/wall_$track" \
        $PY training.py -f "$CACHE/ds_$track" --save --int8 --baseline --output-dir "$CACHE/model_$track" \
        --path "$CACHE/ray" --name "quality_$track" > "$CACHE/train_$track.log"
    $PY inference.py -f "$fresh" --model "$CACHE/model_$track/ghost_model.onnx" \
        --compare "$CACHE/model_$track/ghost_model_int8.onnx" --plots-dir "$CACHE/plots_$track" \
        > "$CACHE/inference_$track.log"
done
$PY -m bench.quality_report "$CACHE"
