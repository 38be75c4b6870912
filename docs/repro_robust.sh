#!/usr/bin/env bash
# Adversarial robustness on the embedded digits (shared/methods/robustness_tta_merging.md
# §3(g), §2(g)2): standard training, PGD-AT, TRADES and SOVR (M = 0.4), eps 0.1, each
# evaluated under PGD-10, PGD-100, APGD-CE and AA-lite. Writes
# RUNS/robust_digits/<method>/all/seed<k>/results.json; then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_robust.sh
source "$(dirname "$0")/repro_common.sh"
for seed in $SEEDS; do
  for method in erm pgd_at trades sovr; do
    run "$RUNS/robust_digits/$method/all/seed$seed" \
      --config=configs/robust.py:digits,method=$method --config.seed=$seed
  done
done
