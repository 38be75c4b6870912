#!/usr/bin/env bash
# PP + P-SSL on digits (shared/methods/generative_and_finetuning.md §4(g)): the source is
# digits 0-4, seen only through a conditional GAN G_s (configs/cgan.py:digits_source, 3,000
# steps) and an MLP classifier C_s (configs/finetune.py:digits_pretrain); the target is digits
# 5-9 with n labeled images per class on the 2-conv CNN. Per seed one pseudo pre-training run
# (configs/pp_pssl.py:pp), then per seed and n the arms, 1,000 steps (the preset's 2,000
# halved for CPU time) with batch 32 labeled (+ 2 x 32 generated for the SSL arms, mu = 2
# instead of FixMatch's 7, also for CPU time), test accuracy at the lowest validation loss:
#   scratch          erm from random weights
#   kd               erm + a 5-way head distilling C_s on the target images (kd.weight 1, T 4)
#   pp               erm from the PP weights (head re-initialised)
#   pssl             P-SSL (FixMatch on C_s-conditioned G_s samples) from random weights
#   pp_pssl          P-SSL from the PP weights
#   pp_pssl_uniform  the control: PP + P-SSL with uniform source classes instead of C_s(x_t)
# Writes RUNS/pp_pssl_digits/<arm>/n<n>/seed<k>/results.json; then docs/make_tables.py.
#   RUNS=runs JOBS=2 bash docs/repro_pp_pssl.sh      (SEEDS="0 1" for fewer)
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
source "$(dirname "$0")/repro_common.sh"
source_dir="$RUNS/pp_pssl_source"
run "$source_dir/c_s" --config=configs/finetune.py:digits_pretrain
run "$source_dir/g_s" --config=configs/cgan.py:digits_source
ssl="--config.inputs.generator=$source_dir/g_s --config.inputs.source_classifier=$source_dir/c_s"
for seed in $SEEDS; do
  pp="$source_dir/pp/seed$seed"
  run "$pp" --config=configs/pp_pssl.py:pp --config.inputs.generator="$source_dir/g_s" \
    --config.seed=$seed
  for n in 5 10 20; do
    target="configs/pp_pssl.py:digits,n=$n,steps=1000"
    common="--config.seed=$seed --config.train.batch_size=32 --config.ssl.unlabeled_ratio=2"
    out="$RUNS/pp_pssl_digits"
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n; done
    ( run "$out/scratch/n$n/seed$seed" --config=$target,method=erm $common
      run "$out/pp/n$n/seed$seed" --config=$target,method=erm $common --config.init_from="$pp"
      run "$out/pssl/n$n/seed$seed" --config=$target,method=pssl $common $ssl
      run "$out/pp_pssl/n$n/seed$seed" --config=$target,method=pssl $common $ssl \
        --config.init_from="$pp"
      run "$out/pp_pssl_uniform/n$n/seed$seed" --config=$target,method=pssl,conditioning=uniform \
        $common $ssl --config.init_from="$pp"
      run "$out/kd/n$n/seed$seed" --config=$target,method=kd $common \
        --config.inputs.source_classifier="$source_dir/c_s" ) &
  done
done
wait
