#!/usr/bin/env bash
# Fine-tuning regularisers on the embedded digits (shared/methods/generative_and_finetuning.md
# §1(g)): per seed, pretrain the MLP on digits 0-4, then fine-tune it on digits 5-9 with n
# images per class (10% of them, at least 1 per class, for validation; split seed 42) with
# FT, L2-SP, RandReg-U / -N / -Pre and AdaRand; test accuracy at the lowest validation loss.
# Writes RUNS/finetune_digits/<arm>/n<n>/seed<k>/results.json (and finetune_glyphs/, below);
# then docs/make_tables.py.
#   RUNS=runs bash docs/repro_finetune.sh          (SEEDS="0 1" for fewer seeds)
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
source "$(dirname "$0")/repro_common.sh"
for seed in $SEEDS; do
  source_run="$RUNS/finetune_digits_source/seed$seed"
  run "$source_run" --config=configs/finetune.py:digits_pretrain --config.seed=$seed
  for n in 5 10 20 50; do
    for arm in finetune l2sp randreg_uniform randreg_normal randreg_pretrained adarand; do
      method=${arm%%_*}; prior=${arm#randreg_}; [ "$method" = randreg ] || prior=pretrained
      run "$RUNS/finetune_digits/$arm/n$n/seed$seed" \
        --config=configs/finetune.py:digits,method=$method,prior=$prior,n=$n \
        --config.seed=$seed --config.init_from="$source_run"
    done
  done
done
# The second, CPU-scale setting (3 seeds): Conv-4 pretrained on the glyphs of the 7 training
# scripts, fine-tuned on the 340 characters of 3 other scripts with n = 5 per class.
for seed in ${GLYPH_SEEDS:-0 1 2}; do
  source_run="$RUNS/finetune_glyphs_source/seed$seed"
  run "$source_run" --config=configs/finetune.py:glyphs_pretrain --config.seed=$seed
  for arm in finetune l2sp randreg_uniform randreg_normal randreg_pretrained adarand; do
    method=${arm%%_*}; prior=${arm#randreg_}; [ "$method" = randreg ] || prior=pretrained
    run "$RUNS/finetune_glyphs/$arm/n5/seed$seed" \
      --config=configs/finetune.py:glyphs,method=$method,prior=$prior,n=5 \
      --config.seed=$seed --config.init_from="$source_run"
  done
done
