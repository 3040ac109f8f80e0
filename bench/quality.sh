#!/usr/bin/env bash
# Classifier quality of the default commands on make_sample's 1,000,000-track samples,
# matching and forward, with the track type's default derived inputs (on) and without
# them (off: make_dataset.py --no-derived): the network (float and INT8), the
# gradient-boosted-trees baseline (fed the same inputs as the network) and the
# generator's known optimum, with the search's wall time and the chosen network's cost
# per track.  Targets (README): AUC within 0.01 of the limit, ghost rejection at 99 %
# efficiency >= 90 % of the limit's and ahead of the baseline, the search < 3 min on
# 2 cores, INT8 within 0.005 AUC, <= ~20k MACs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CACHE=${CACHE:-bench/.cache/quality}
TRACKS=${TRACKS:-1000000}
VARIANTS=${VARIANTS:-on off}  # the derived inputs on, off (one of them: rerun that one)
TYPES=${TYPES:-matching forward}
mkdir -p "$CACHE"
echo "$TRACKS" > "$CACHE/tracks"
for track in $TYPES; do
    sample=$CACHE/${track}_train_$TRACKS.root fresh=$CACHE/${track}_fresh.root
    [ -f "$sample" ] || $PY make_sample.py -o "$sample" --tracks "$TRACKS" --track $track --seed 11 > /dev/null
    [ -f "$fresh" ] || $PY make_sample.py -o "$fresh" --tracks 300000 --track $track --seed 12 > /dev/null
    for derived in $VARIANTS; do
        run=${track}_$derived
        $PY make_dataset.py -f "$sample" --output "$CACHE/ds_$run" --track $track \
            $([ $derived = off ] && echo --no-derived) > "$CACHE/ds_$run.log"
        # the default search, with the INT8 model and the baseline beside it
        /usr/bin/time -f "%e" -o "$CACHE/wall_$run" \
            $PY training.py -f "$CACHE/ds_$run" --save --int8 --baseline --output-dir "$CACHE/model_$run" \
            --path "$CACHE/ray" --name "quality_$run" > "$CACHE/train_$run.log"
        $PY inference.py -f "$fresh" --model "$CACHE/model_$run/ghost_model.onnx" \
            --compare "$CACHE/model_$run/ghost_model_int8.onnx" --plots-dir "$CACHE/plots_$run" \
            > "$CACHE/inference_$run.log"
    done
done
$PY -m bench.quality_report "$CACHE"
