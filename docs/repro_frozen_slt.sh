#!/usr/bin/env bash
# Reproduces shared/methods/meta_learning_and_sparse.md §4(g) (strong lottery tickets in
# partially frozen networks, arXiv 2402.14029) at digits scale on CPU: target sparsity s in
# {0.5, 0.7}; the dense-source SLT at widths 1, 0.7, 0.5, 0.25 (fewer bits); freezing ratios
# f in {0.3, 0.5, 0.7, 0.9} split all_prune (p = f, the randomly pruned source), balanced
# (p = r = f/2) or all_lock (r = f, only where f <= 1 - s). Runs:
# RUNS/frozen_slt/<arm>/s<s>/seed<k>/results.json; then `python docs/make_tables.py` and
# `python docs/plot_frozen_slt.py`.
#   RUNS=runs bash docs/repro_frozen_slt.sh
source "$(dirname "$0")/repro_common.sh"

for seed in $SEEDS; do
  for s in 0.5 0.7; do
    for width in 1.0 0.7 0.5 0.25; do
      run "$RUNS/frozen_slt/dense_w$width/s$s/seed$seed" \
          --config=configs/frozen_slt.py:digits_mlp,sparsity=$s,freeze=0.0,width=$width,seed=$seed
    done
    for f in 0.3 0.5 0.7 0.9; do
      for split in all_prune balanced all_lock; do
        if [ $split = all_lock ] && python -c "import sys; sys.exit(not $f > 1 - $s + 1e-9)"; then
          continue  # every free weight pruned and more kept than s allows
        fi
        run "$RUNS/frozen_slt/${split}_f$f/s$s/seed$seed" \
            --config=configs/frozen_slt.py:digits_mlp,sparsity=$s,freeze=$f,split=$split,seed=$seed
      done
    done
  done
done
