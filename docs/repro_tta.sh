#!/usr/bin/env bash
# Reproduces shared/methods/robustness_tta_merging.md §4(g) (test-time adaptation, CAFe) at
# digits scale on CPU. Writes RUNS/tta_digits/<arm>/<stream>/seed<k>/results.json (and the
# source models in RUNS/tta_digits_source/seed<k>); then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_tta.sh
source "$(dirname "$0")/repro_common.sh"

# arm -> method and flags. cafe_ungrouped: one group holding all d = 64 features, batch 32 <
# d (the spec's "instability without shrinkage"); cafe_ungrouped_shrink: the same with the
# batch covariance shrunk halfway to a scaled identity.
arm_args() {
  case $1 in
    cafe_no_im) echo "method=cafe --config.tta.cafe_im=False" ;;
    cafe_ungrouped) echo "method=cafe --config.tta.cafe_groups=1 --config.tta.cafe_max_group_size=64" ;;
    cafe_ungrouped_shrink) echo "method=cafe --config.tta.cafe_groups=1 --config.tta.cafe_max_group_size=64 --config.tta.cafe_shrinkage=0.5" ;;
    *) echo "method=$1" ;;
  esac
}
# stream -> preset arguments: the mixed stream (all six corruptions, severity 5, pooled and
# shuffled), one corruption at a time (reset per corruption), continual (no reset), label
# shift (the mixed stream arriving class by class), batch size 1, and Tent's protocol over
# every severity (5 -> 1, reset per corruption x severity) for the heat map.
stream_args() {
  case $1 in
    mixed) echo "protocol=mixed" ;;
    single) echo "protocol=single" ;;
    continual) echo "protocol=continual" ;;
    label_shift) echo "protocol=mixed,class_order=runs" ;;
    batch1) echo "protocol=mixed,batch=1" ;;
    single_all) echo "protocol=single" ;;
  esac
}

for seed in $SEEDS; do
  source_run="$RUNS/tta_digits_source/seed$seed"
  run "$source_run" --config=configs/tta.py:digits_source --config.seed=$seed
  for stream in mixed single continual label_shift batch1 single_all; do
    arms="source bn_adapt tent cafe"
    [ "$stream" = mixed ] && arms="$arms tent_episodic cafe_no_im cafe_ungrouped cafe_ungrouped_shrink"
    for arm in $arms; do
      read -r preset flags <<< "$(arm_args "${arm/tent_episodic/tent}")"
      [ "$arm" = tent_episodic ] && flags="$flags --config.tta.episodic=True"
      [ "$stream" = single_all ] && flags="$flags --config.tta.severities=5,4,3,2,1"
      # shellcheck disable=SC2086
      run "$RUNS/tta_digits/$arm/$stream/seed$seed" \
        --config=configs/tta.py:digits,$preset,$(stream_args $stream) $flags \
        --config.seed=$seed --config.init_from="$source_run"
    done
  done
done
