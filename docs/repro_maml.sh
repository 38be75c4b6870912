#!/usr/bin/env bash
# Reproduces shared/methods/meta_learning_and_sparse.md §1(g) at small scale on CPU.
# Writes RUNS/<table>/<row>/<column>/seed<k>/results.json; then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_maml.sh
source "$(dirname "$0")/repro_common.sh"

# 1. Sinusoid (the paper's settings, 70k steps): MAML vs a jointly pretrained model
#    (meta.train_steps=0: trained on the query loss at theta, no inner step), both
#    fine-tuned at test time with 1..10 steps of SGD at alpha=0.01.
for seed in $SEEDS; do
  run "$RUNS/maml_sinusoid/maml/all/seed$seed" --config=configs/maml.py:sinusoid --config.seed=$seed
  run "$RUNS/maml_sinusoid/pretrained/all/seed$seed" --config=configs/maml.py:sinusoid \
    --config.seed=$seed --config.meta.train_steps=0
done

# 2. Glyphs 5-way 1/5-shot, Conv-4 (strided, batch-statistics BN) at CPU scale:
#    32 filters, 8 tasks per meta-batch, 1000 outer steps; test on 600 fixed episodes
#    of the test alphabets. Inner lr 0.4, 1 train / 3 test steps (MAML's Omniglot).
CPU="--config.model.filters=32 --config.episodes.meta_batch=8 --config.train.steps=1000 --config.train.eval_every=0"
# Order: 1-shot (all methods, then scratch), 5-shot scratch, MAML / FOMAML, then 5-shot
# ANIL / BOIL, so that an interrupted sweep leaves whole comparisons.
glyphs() { local shots=$1; shift
  for method in "$@"; do  # (later flags win: $CPU before any override of its keys)
    for seed in $SEEDS; do
      run "$RUNS/maml_glyphs/$method/5w${shots}s/seed$seed" --config=configs/maml.py:glyphs_5w${shots}s \
        --config.method=$method --config.seed=$seed $CPU
    done
  done
}
# Training from scratch on the support set: no meta-training (train.steps=0), 100 SGD steps
# from the random init; its step size is chosen on the validation alphabets (seed 0).
scratch() { local shots=$1
  for lr in 0.01 0.1 0.4; do
    run "$RUNS/maml_glyphs_scratch_sweep/lr$lr/5w${shots}s/seed0" --config=configs/maml.py:glyphs_5w${shots}s \
      $CPU --config.train.steps=0 --config.meta.test_steps=100 --config.meta.scan_inner=True --config.meta.inner_lr=$lr \
      --config.data.eval_splits=validation
  done
  best=$(python - "$RUNS" "$shots" <<'PY'
import glob, json, sys
runs, shots = sys.argv[1:]
paths = glob.glob(f"{runs}/maml_glyphs_scratch_sweep/lr*/5w{shots}s/seed0/results.json")
print(max(paths, key=lambda p: json.load(open(p))["validation/accuracy"]).split("/lr")[1].split("/")[0])
PY
)
  for seed in $SEEDS; do
    run "$RUNS/maml_glyphs/scratch/5w${shots}s/seed$seed" --config=configs/maml.py:glyphs_5w${shots}s \
      --config.seed=$seed $CPU --config.train.steps=0 --config.meta.test_steps=100 --config.meta.scan_inner=True --config.meta.inner_lr=$best \
      --config.data.eval_splits=test
  done
}
glyphs 1 maml fomaml anil boil
scratch 1
scratch 5
glyphs 5 maml fomaml
glyphs 5 anil boil

# 3. Budget check on FOMAML's gap to MAML (1-shot, seed 0): the same runs at 3,000 steps.
for method in maml fomaml; do
  run "$RUNS/maml_glyphs/${method}_3k/5w1s/seed0" --config=configs/maml.py:glyphs_5w1s \
    --config.method=$method --config.seed=0 $CPU --config.train.steps=3000
done
