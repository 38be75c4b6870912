#!/usr/bin/env bash
# Adversarial robustness on the embedded digits (shared/methods/robustness_tta_merging.md
# §3(g), §2(g)2, §1(g)), eps 0.1: standard training, PGD-AT, TRADES, SOVR (M = 0.4), the
# weighted-CE arms GAIRAT and MAIL, and the four ARREST arms fine-tuned (1,000 steps) from
# the standard run of the same seed: AFT, AFT + RGKD, AFT + NR, ARREST. Each is evaluated
# under PGD-10, PGD-100, APGD-CE and AA-lite, with the adversarial margin histogram. Writes
# RUNS/robust_digits/<arm>/all/seed<k>/results.json (and the logit-scaling check below to
# RUNS/robust_digits_logit_scale/); then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_robust.sh
source "$(dirname "$0")/repro_common.sh"
for seed in $SEEDS; do
  for method in erm pgd_at trades sovr gairat mail; do
    run "$RUNS/robust_digits/$method/all/seed$seed" \
      --config=configs/robust.py:digits,method=$method --config.seed=$seed
  done
  arrest_arm() { local arm=$1; shift
    run "$RUNS/robust_digits/$arm/all/seed$seed" --config=configs/robust.py:digits,method=arrest \
      --config.seed=$seed --config.init_from="$RUNS/robust_digits/erm/all/seed$seed" "$@"; }
  arrest_arm aft --config.arrest.rgkd_weight=0.0 --config.arrest.noisy_replay=False
  arrest_arm aft_rgkd --config.arrest.noisy_replay=False
  arrest_arm aft_nr --config.arrest.rgkd_weight=0.0
  arrest_arm arrest
  arrest_arm arrest_t098 --config.arrest.nr_threshold=0.98  # NR that fires despite RGKD
done
# Gradient masking (§3(g)): the trained erm and PGD-AT models re-evaluated (from a copy of
# their final checkpoint) with the attacks seeing the logits x1 and x1e4.
for seed in $SEEDS; do
  for method in erm pgd_at; do
    for scale in 1 10000; do
      dir="$RUNS/robust_digits_logit_scale/${method}_x$scale/all/seed$seed"
      [ -d "$dir/checkpoints" ] || { mkdir -p "$dir"
        cp -r "$RUNS/robust_digits/$method/all/seed$seed/checkpoints" "$dir/"; }
      run "$dir" --config=configs/robust.py:digits,method=$method --config.seed=$seed \
        --config.adv.logit_scale=$scale --config.adv.eval_attacks=pgd10,apgd_ce,apgd_dlr \
        --config.adv.margin_bins=
    done
  done
done
