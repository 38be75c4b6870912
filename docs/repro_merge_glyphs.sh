#!/usr/bin/env bash
# The glyphs merging setting of shared/methods/robustness_tta_merging.md §5 (the paper's
# MNIST <-> Fashion-MNIST design: two label sets under one head) with a BatchNorm Conv-4 on
# CPU. Endpoints (configs/merge.py:glyphs_endpoint; 15 training and 5 test images per
# character): A on glyphs characters 0-19, B on characters 20-39 relabelled 0-19, A2 on 0-19
# with another seed: RUNS/merge_glyphs_endpoint/<data>/seed<k>; merges:
# RUNS/merge_glyphs/<pair>/<arm>/seed<k>/results.json; then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_merge_glyphs.sh
source "$(dirname "$0")/repro_common.sh"

endpoint() {  # endpoint DATA SEED CLASSES SEED_OFFSET
  run "$RUNS/merge_glyphs_endpoint/$1/seed$2" \
      --config=configs/merge.py:glyphs_endpoint,classes=$3,seed=$(( $2 + $4 ))
}

for seed in $SEEDS; do
  endpoint a "$seed" range:0-19 0
  endpoint b "$seed" range:20-39 100
  endpoint a2 "$seed" range:0-19 200
  for arm in wm am ste_full; do
    method=merge_${arm%_full}
    run "$RUNS/merge_glyphs/cross/$arm/seed$seed" \
        --config=configs/merge.py:glyphs,method=$method,seed=$seed \
        --config.inputs.model_a="$RUNS/merge_glyphs_endpoint/a/seed$seed" \
        --config.inputs.model_b="$RUNS/merge_glyphs_endpoint/b/seed$seed"
  done
  run "$RUNS/merge_glyphs/same/wm/seed$seed" \
      --config=configs/merge.py:glyphs,method=merge_wm,seed=$seed \
      --config.merge.b_classes=range:0-19 \
      --config.inputs.model_a="$RUNS/merge_glyphs_endpoint/a/seed$seed" \
      --config.inputs.model_b="$RUNS/merge_glyphs_endpoint/a2/seed$seed"
done
