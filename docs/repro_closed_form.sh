#!/usr/bin/env bash
# Reproduces shared/methods/closed_form_meta_learning.md §1(g)-§4(g) (meta-SSL across attribute
# spaces, meta OoD detection, meta PU classification, meta relative density-ratio estimation)
# at CPU scale, per seed. Runs, in the layout of docs/make_tables.py's tables:
# RUNS/closed_form_{ssl,ood,pu,rdre}/<arm>/<tasks>/seed<k>/results.json; then
# `python docs/make_tables.py --runs RUNS`.
#   RUNS=runs SEEDS="0 1 2" bash docs/repro_closed_form.sh
# SSL_STEPS (3000) sets the meta-SSL runs' length (the VFSA step is ~6 steps/s on 2 cores).
source "$(dirname "$0")/repro_common.sh"
cf=configs/closed_form.py
ssl_steps=${SSL_STEPS:-3000}
# evaluated once, at the end (evaluation never changes training: the same final numbers)
once=--config.train.eval_every=0
for seed in $SEEDS; do
  # §1: labelled rows a class 1 / 3, with and without U, without row attention
  for shots in 1 3; do
    out="$RUNS/closed_form_ssl"
    ssl=$cf:ssl_tables,shots=$shots,steps=$ssl_steps
    run "$out/full/k$shots/seed$seed" --config=$ssl --config.seed=$seed $once
    run "$out/no_unlabeled/k$shots/seed$seed" --config=$ssl,use_unlabeled=False \
        --config.seed=$seed $once
    run "$out/no_row_attention/k$shots/seed$seed" --config=$ssl,row_attention=False \
        --config.seed=$seed $once
  done
  # §2: the latent mixture's covariance and score, the no-meta encoders, task rotations, 1 shot
  out="$RUNS/closed_form_ood"
  run "$out/full/digits/seed$seed" --config=$cf:ood_digits --config.seed=$seed $once
  run "$out/diag/digits/seed$seed" --config=$cf:ood_digits,covariance=diag --config.seed=$seed $once
  run "$out/shared/digits/seed$seed" --config=$cf:ood_digits,covariance=shared --config.seed=$seed $once
  run "$out/proto/digits/seed$seed" --config=$cf:ood_digits,score=proto --config.seed=$seed $once
  run "$out/untrained/digits/seed$seed" --config=$cf:ood_digits,steps=0 --config.seed=$seed $once
  run "$out/pca/digits/seed$seed" --config=$cf:ood_digits,encoder=pca,steps=0 --config.seed=$seed $once
  run "$out/rot180/digits/seed$seed" --config=$cf:ood_digits,rotation=180 --config.seed=$seed $once
  run "$out/shot1_full/digits/seed$seed" --config=$cf:ood_digits,shots=1 --config.seed=$seed $once
  run "$out/shot1_diag/digits/seed$seed" --config=$cf:ood_digits,shots=1,covariance=diag \
      --config.seed=$seed $once
  # §3: few and more P / U examples, synthetic and digits tasks
  out="$RUNS/closed_form_pu"
  run "$out/gauss/tasks/seed$seed" --config=$cf:pu_gauss --config.seed=$seed $once
  run "$out/gauss_p50_u200/tasks/seed$seed" --config=$cf:pu_gauss,positives=50,unlabeled=200 \
      --config.seed=$seed $once
  run "$out/digits/tasks/seed$seed" --config=$cf:pu_digits --config.seed=$seed $once
  # §4: N = 30 and 100, alpha 0.5 and 0, digits outliers
  out="$RUNS/closed_form_rdre"
  run "$out/gauss/tasks/seed$seed" --config=$cf:rdre_gauss --config.seed=$seed $once
  run "$out/gauss_alpha0/tasks/seed$seed" --config=$cf:rdre_gauss,alpha=0.0 --config.seed=$seed $once
  run "$out/gauss_n100/tasks/seed$seed" --config=$cf:rdre_gauss,support=100 --config.seed=$seed $once
  run "$out/outlier/tasks/seed$seed" --config=$cf:rdre_outlier --config.seed=$seed $once
done
