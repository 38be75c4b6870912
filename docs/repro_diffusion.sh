#!/usr/bin/env bash
# Reproduces shared/methods/generative_and_finetuning.md §5(g) (the reconstruction gap of
# diffusion models, arXiv 2311.13090) at digits scale on CPU, per seed: a reference CNN on
# the real digits (t = 0), a class-conditional DDPM (8x8 MLP, T = 200, 20k steps), CNNs
# trained on its reconstructions D^(t) of the training split for t/T in {0.1, 0.25, 0.5,
# 0.75, 1} with guidance 1 (none) and 3 (w = 2 in Ho & Salimans' terms), and the analysis of
# D^(t) in the reference's features. Runs, in the layout of docs/make_tables.py's tables:
# RUNS/diffusion_accuracy/{real/t0,g<guidance>/t<t>}, RUNS/diffusion_ddpm/ddpm/digits,
# RUNS/diffusion_gap/g<guidance>/metrics, each /seed<k>/results.json; then
# `python docs/make_tables.py --runs RUNS` and `python docs/plot_diffusion.py --runs RUNS`.
#   RUNS=runs SEEDS="0 1 2 3 4" bash docs/repro_diffusion.sh
source "$(dirname "$0")/repro_common.sh"

for seed in $SEEDS; do
  ref="$RUNS/diffusion_accuracy/real/t0/seed$seed"
  run "$ref" --config=configs/diffusion_gap.py:digits,seed=$seed
  ddpm="$RUNS/diffusion_ddpm/ddpm/digits/seed$seed"
  run "$ddpm" --config=configs/ddpm.py:digits --config.seed=$seed \
      --config.inputs.score_classifier="$ref"
  for guidance in 1 3; do
    for t in 0.1 0.25 0.5 0.75 1.0; do
      run "$RUNS/diffusion_accuracy/g$guidance/t$t/seed$seed" \
          --config=configs/diffusion_gap.py:digits,t=$t,seed=$seed,guidance=$guidance \
          --config.data.reconstruct.run="$ddpm"
    done
    run "$RUNS/diffusion_gap/g$guidance/metrics/seed$seed" \
        --config=configs/diffusion_gap.py:digits_metrics,seed=$seed,guidance=$guidance \
        --config.inputs.diffusion="$ddpm" --config.inputs.reference="$ref"
  done
done
