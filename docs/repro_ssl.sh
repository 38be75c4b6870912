#!/usr/bin/env bash
# Generative SSL with meta-optimised synthetic samples on digits
# (shared/methods/generative_and_finetuning.md §3(g)): the "foundation" generator is a
# conditional GAN on the full digits training split (configs/cgan.py:digits, 3,000 steps,
# its 10 digit classes as the source classes) and C_s, which initialises the latents, the
# 2-conv CNN trained on the same images (configs/erm.py:digits). The target: digits with k
# labels per class (split seed 42, the same subset for every seed), no real unlabeled image
# except in the oracle. Per seed and k the arms, 1,000 steps (the spec's ~3k cut for CPU
# time), batch 32 labeled, test accuracy at the final step:
#   supervised          erm on the k labels per class
#   random_synthetic    meta_gen_ssl with meta=False, latent_init=random (uniform classes)
#   pseudo_conditional  meta_gen_ssl with meta=False (latents from C_s of the labeled images)
#   meta_gen_ssl        the full method (meta-optimised latents, cosine L_u)
#   fixmatch            the oracle: FixMatch on the real training images, labels dropped,
#                       mu = 2 (instead of 7): 64 unlabeled images per step, as many as the
#                       synthetic arms' 64 generated ones
# Writes RUNS/ssl_digits/<arm>/k<k>/seed<s>/results.json and
# RUNS/ssl_generator/cgan/steps3000/seed0/results.json; then docs/make_tables.py.
#   RUNS=runs JOBS=2 bash docs/repro_ssl.sh          (SEEDS="0 1" for fewer; KS="1 2" for
#                                                    fewer label budgets)
SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
source "$(dirname "$0")/repro_common.sh"
classifier="$RUNS/ssl_source/classifier"
generator="$RUNS/ssl_generator/cgan/steps3000/seed0"
run "$classifier" --config=configs/erm.py:digits
run "$generator" --config=configs/cgan.py:digits,steps=3000 \
  --config.inputs.score_classifier="$classifier"
frozen="--config.inputs.generator=$generator
        --config.inputs.source_classifier=$classifier"
for seed in $SEEDS; do
  for k in ${KS:-1 2 4 10}; do
    target="configs/ssl.py:digits,labels=$k,steps=1000"
    common="--config.seed=$seed --config.train.batch_size=32 --config.ssl.unlabeled_ratio=2"
    out="$RUNS/ssl_digits"
    while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n; done
    ( run "$out/supervised/k$k/seed$seed" --config=$target,method=erm $common
      run "$out/meta_gen_ssl/k$k/seed$seed" --config=$target,method=meta_gen_ssl $common $frozen
      run "$out/pseudo_conditional/k$k/seed$seed" --config=$target,method=meta_gen_ssl $common \
        $frozen --config.meta_gen_ssl.meta=False
      run "$out/random_synthetic/k$k/seed$seed" --config=$target,method=meta_gen_ssl $common \
        $frozen --config.meta_gen_ssl.meta=False --config.meta_gen_ssl.latent_init=random
      run "$out/fixmatch/k$k/seed$seed" --config=$target,method=fixmatch $common ) &
  done
done
wait
