#!/usr/bin/env bash
# Reproduces shared/methods/meta_learning_and_sparse.md §5(g) (learning-trajectory transfer,
# GMT / FGMT, arXiv 2305.14122) at digits scale on CPU: six MLP runs 64-1024-10 (seeds 101,
# 102, 201, 202, 301, 302; the code's deep linear network and a ReLU one), each keeping every
# epoch; for the (source, target) pairs (101, 102), (201, 202), (301, 302) the transfer of the
# source's init -> final trajectory (T = 10, cosine) to the target's initialisation by naive,
# GMT, FGMT and oracle permutations; then fine-tuning 1 and 3 epochs from each arm's best
# point and from scratch; the same transfers for the optional CNN of §5(g) (column `cnn`). Runs: RUNS/learning_transfer/<arm>/<activation>/seed<target>/ (the
# trained runs under arm `trained`, all six seeds), RUNS/learning_transfer_ft_<activation>/
# <init>/e<epochs>/seed<target>/; then `python docs/make_tables.py` and
# `python docs/plot_learning_transfer.py`.
#   RUNS=runs bash docs/repro_learning_transfer.sh
source "$(dirname "$0")/repro_common.sh"
PAIRS=${PAIRS:-"101:102 201:202 301:302"}
CONFIG=configs/learning_transfer.py

for act in none relu; do
  for pair in $PAIRS; do
    src=${pair%:*}; tgt=${pair#*:}
    for seed in $src $tgt; do
      run "$RUNS/learning_transfer/trained/$act/seed$seed" \
          --config=$CONFIG:digits_source,activation=$act,seed=$seed
    done
    source_run=$RUNS/learning_transfer/trained/$act/seed$src
    for mode in naive gmt fgmt oracle; do
      target=()
      [ $mode = oracle ] && target=(--config.inputs.target="$RUNS/learning_transfer/trained/$act/seed$tgt")
      run "$RUNS/learning_transfer/$mode/$act/seed$tgt" \
          --config=$CONFIG:digits,mode=$mode,activation=$act,seed=$tgt \
          --config.inputs.source="$source_run" "${target[@]}"
    done
    for init in scratch naive gmt fgmt oracle; do
      start=()
      [ $init != scratch ] && start=(--config.init_from="$RUNS/learning_transfer/$init/$act/seed$tgt/best.npz")
      for epochs in 1 3; do
        run "$RUNS/learning_transfer_ft_$act/$init/e$epochs/seed$tgt" \
            --config=$CONFIG:digits_ft,activation=$act,seed=$tgt,epochs=$epochs "${start[@]}"
      done
    done
  done
done

for pair in $PAIRS; do  # the optional CNN (no fine-tuning arm)
  src=${pair%:*}; tgt=${pair#*:}
  for seed in $src $tgt; do
    run "$RUNS/learning_transfer/trained/cnn/seed$seed" --config=$CONFIG:digits_cnn_source,seed=$seed
  done
  for mode in naive gmt fgmt oracle; do
    target=()
    [ $mode = oracle ] && target=(--config.inputs.target="$RUNS/learning_transfer/trained/cnn/seed$tgt")
    run "$RUNS/learning_transfer/$mode/cnn/seed$tgt" --config=$CONFIG:digits_cnn,mode=$mode,seed=$tgt \
        --config.inputs.source="$RUNS/learning_transfer/trained/cnn/seed$src" "${target[@]}"
  done
done

for pair in $PAIRS; do  # GMT's instability on the deep linear MLP: warm-started solves, 4 batches
  src=${pair%:*}; tgt=${pair#*:}
  source_run=$RUNS/learning_transfer/trained/none/seed$src
  run "$RUNS/learning_transfer/gmt_warm/none/seed$tgt" --config=$CONFIG:digits,mode=gmt,seed=$tgt \
      --config.inputs.source="$source_run" --config.transfer.warm_start=True
  run "$RUNS/learning_transfer/gmt_gm4/none/seed$tgt" --config=$CONFIG:digits,mode=gmt,seed=$tgt \
      --config.inputs.source="$source_run" --config.transfer.gm_iters=4
done
