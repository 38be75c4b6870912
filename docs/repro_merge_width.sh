#!/usr/bin/env bash
# Reproduces shared/methods/robustness_tta_merging.md §6.2(g) (linear mode connectivity from
# width alone, arXiv 2510.08023) at digits scale on CPU. Endpoints: bias-free MLPs
# 64-(32w)x3-10, Adam 1e-3, 200 epochs, weight decay 3e-3 (main) or 1e-4 (ablation), seeds
# 0, 1, 2: RUNS/merge_width_endpoint/w<w>/wd<wd>/seed<k>; merges of seed k with seed k+1 (mod
# 3), the naive line with no permutation and the weight-matched line:
# RUNS/merge_width/w<w>/wd<wd>/seed<k>/results.json; then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_merge_width.sh
source "$(dirname "$0")/repro_common.sh"
WIDTHS=${WIDTHS:-"1 2 4 8 16"}

for wd in 3e-3 1e-4; do
  for w in $WIDTHS; do
    for seed in $SEEDS; do
      run "$RUNS/merge_width_endpoint/w$w/wd$wd/seed$seed" \
          --config=configs/merge.py:width_endpoint,w=$w,wd=$wd,seed=$seed
    done
    for seed in $SEEDS; do
      other=$(( (seed + 1) % 3 ))
      run "$RUNS/merge_width/w$w/wd$wd/seed$seed" \
          --config=configs/merge.py:width,w=$w,seed=$seed \
          --config.inputs.model_a="$RUNS/merge_width_endpoint/w$w/wd$wd/seed$seed" \
          --config.inputs.model_b="$RUNS/merge_width_endpoint/w$w/wd$wd/seed$other"
    done
  done
done
