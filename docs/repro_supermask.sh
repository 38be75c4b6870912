#!/usr/bin/env bash
# Reproduces shared/methods/meta_learning_and_sparse.md §3(g) and §2(g) experiment 1 at
# small scale on CPU. Writes RUNS/<table>/<row>/<column>/seed<k>/results.json; then
# `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_supermask.sh
source "$(dirname "$0")/repro_common.sh"

# 1. §3(g): edge-popup vs IteRand (r = 0.1, K_per = 4 steps) vs weight training (SGD) on the
#    digits MLP at width factors 0.25-2, p = 0.5, 50 epochs.
for width in 0.25 0.5 1 2; do
  for method in edge_popup iterand erm; do
    for seed in $SEEDS; do
      run "$RUNS/supermask_digits/$method/w$width/seed$seed" \
        --config=configs/supermask.py:digits_mlp,method=$method,width=$width --config.seed=$seed
    done
  done
done

# 2. §2(g) experiment 1: MAML vs Meta-ticket on glyphs 5-way with MT's MLP at width factors.
#    CPU scale: 1,000 outer steps (MT: 30,000), warm-up scaled to 1/30 of training as in MT
#    (1,000 of 30,000), final evaluation only. Seeds outermost, so that an interrupted
#    sweep leaves whole seeds. Factor 8 and 5-shot as time allows (FACTORS, SHOTS).
for seed in $SEEDS; do
  for shots in ${SHOTS:-1}; do
    for factor in ${FACTORS:-1 2 4}; do
      for method in meta_ticket maml; do
        run "$RUNS/meta_ticket_width/$method/f${factor}_5w${shots}s/seed$seed" \
          --config=configs/meta_ticket.py:glyphs_5w${shots}s,factor=$factor,method=$method \
          --config.seed=$seed --config.train.steps=1000 --config.optimizer.warmup_steps=33 \
          --config.train.eval_every=0 --config.train.checkpoint_every=500
      done
    done
  done
done

# 3. §3(g) ablations on digits: edge-popup ranking raw scores as IteRand does, with
#    edge-popup's score initialiser (edge_popup_raw) and with IteRand's (iterand_r0: IteRand
#    with r = 0, isolating re-randomisation from the ranking rule and the scores' scale),
#    IteRand with r = 1.0, and the signed-constant initialisation for edge-popup and IteRand.
for width in 0.25 0.5 1 2; do
  for seed in $SEEDS; do
    run "$RUNS/supermask_digits/edge_popup_raw/w$width/seed$seed" \
      --config=configs/supermask.py:digits_mlp,method=edge_popup,width=$width \
      --config.supermask.policy=topk_raw --config.seed=$seed
    run "$RUNS/supermask_digits/iterand_r0/w$width/seed$seed" \
      --config=configs/supermask.py:digits_mlp,method=edge_popup,width=$width \
      --config.supermask.policy=topk_raw --config.supermask.score_init=kaiming_uniform \
      --config.seed=$seed
  done
done
for width in 0.25 1; do
  for seed in $SEEDS; do
    run "$RUNS/supermask_digits/iterand_r1.0/w$width/seed$seed" \
      --config=configs/supermask.py:digits_mlp,method=iterand,width=$width,rerand_rate=1.0 \
      --config.seed=$seed
    for method in edge_popup iterand; do
      run "$RUNS/supermask_digits/${method}_signed/w$width/seed$seed" \
        --config=configs/supermask.py:digits_mlp,method=$method,width=$width,init=signed_constant \
        --config.seed=$seed
    done
  done
done

# 4. §2(g) experiment 2: sinusoid, 5 shots, 5 inner steps; MAML vs the hybrid Meta-ticket
#    (only the 40x40 layer masked, re-randomised at rate 1 every 1,000 steps), 30,000 steps.
for seed in $SEEDS; do
  for method in meta_ticket maml; do
    run "$RUNS/meta_ticket_sinusoid/$method/all/seed$seed" \
      --config=configs/meta_ticket.py:sinusoid_hybrid,method=$method --config.seed=$seed
  done
done
