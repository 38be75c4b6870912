#!/usr/bin/env bash
# Re-runs the arms that the fidelity corrections of issue 20 change, with the exact flags of
# repro_supermask.sh and repro_ssl.sh; the other arms of those tables are unchanged by them.
#   1. meta_gen_ssl's lazy Adam on the latents: every generator-fed arm of §3(g) (meta_gen_ssl,
#      and pseudo_conditional and random_synthetic, which read the same generator, so that the
#      three share one generator run; supervised and fixmatch read none) - repro_ssl.sh;
#   2. Meta-ticket's warm-up and re-randomisation timing: the meta_ticket arms of the glyphs
#      width study and of the sinusoid hybrid - repro_supermask.sh parts 2 and 4;
#   3. edge-popup's score initialiser: the edge_popup, edge_popup_raw and edge_popup_signed
#      rows of §3(g), and the new iterand_r0 control (edge-popup's step with IteRand's ranking
#      and score initialiser) - repro_supermask.sh parts 1 and 3.
# Then `python docs/make_tables.py --runs RUNS` after copying config.json/results.json into
# docs/runs (see docs/supermask.md and docs/ssl.md).
#   RUNS=runs JOBS=2 bash docs/repro_fidelity.sh     (PARTS="3 2 1" picks and orders parts)
source "$(dirname "$0")/repro_common.sh"
SSL_SEEDS=${SSL_SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
queue() { while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n; done; ( "$@" ) & }

part3() {
  for width in 0.25 0.5 1 2; do
    for seed in $SEEDS; do
      queue run "$RUNS/supermask_digits/edge_popup/w$width/seed$seed" \
        --config=configs/supermask.py:digits_mlp,method=edge_popup,width=$width --config.seed=$seed
      queue run "$RUNS/supermask_digits/edge_popup_raw/w$width/seed$seed" \
        --config=configs/supermask.py:digits_mlp,method=edge_popup,width=$width \
        --config.supermask.policy=topk_raw --config.seed=$seed
      queue run "$RUNS/supermask_digits/iterand_r0/w$width/seed$seed" \
        --config=configs/supermask.py:digits_mlp,method=edge_popup,width=$width \
        --config.supermask.policy=topk_raw --config.supermask.score_init=kaiming_uniform \
        --config.seed=$seed
    done
  done
  for width in 0.25 1; do
    for seed in $SEEDS; do
      queue run "$RUNS/supermask_digits/edge_popup_signed/w$width/seed$seed" \
        --config=configs/supermask.py:digits_mlp,method=edge_popup,width=$width,init=signed_constant \
        --config.seed=$seed
    done
  done
}

part2() {
  for seed in $SEEDS; do
    queue run "$RUNS/meta_ticket_sinusoid/meta_ticket/all/seed$seed" \
      --config=configs/meta_ticket.py:sinusoid_hybrid,method=meta_ticket --config.seed=$seed
    for factor in ${FACTORS:-1 2 4}; do
      queue run "$RUNS/meta_ticket_width/meta_ticket/f${factor}_5w1s/seed$seed" \
        --config=configs/meta_ticket.py:glyphs_5w1s,factor=$factor,method=meta_ticket \
        --config.seed=$seed --config.train.steps=1000 --config.optimizer.warmup_steps=33 \
        --config.train.eval_every=0 --config.train.checkpoint_every=500
    done
  done
}

part1() {
  classifier="$RUNS/ssl_source/classifier"
  generator="$RUNS/ssl_generator/cgan/steps3000/seed0"
  run "$classifier" --config=configs/erm.py:digits
  run "$generator" --config=configs/cgan.py:digits,steps=3000 \
    --config.inputs.score_classifier="$classifier"
  frozen="--config.inputs.generator=$generator --config.inputs.source_classifier=$classifier"
  for seed in $SSL_SEEDS; do
    for k in ${KS:-1 2 4 10}; do
      target="configs/ssl.py:digits,labels=$k,steps=1000"
      common="--config.seed=$seed --config.train.batch_size=32 --config.ssl.unlabeled_ratio=2"
      out="$RUNS/ssl_digits"
      queue run "$out/meta_gen_ssl/k$k/seed$seed" --config=$target,method=meta_gen_ssl $common \
        $frozen
      queue run "$out/pseudo_conditional/k$k/seed$seed" --config=$target,method=meta_gen_ssl \
        $common $frozen --config.meta_gen_ssl.meta=False
      queue run "$out/random_synthetic/k$k/seed$seed" --config=$target,method=meta_gen_ssl \
        $common $frozen --config.meta_gen_ssl.meta=False --config.meta_gen_ssl.latent_init=random
    done
  done
}

for part in ${PARTS:-3 2 1}; do "part$part"; done
wait
