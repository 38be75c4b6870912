#!/usr/bin/env bash
# Reproduces shared/methods/robustness_tta_merging.md §5(g) (merging models trained on
# different datasets) at digits scale on CPU. Endpoints: RUNS/merge_digits_endpoint/<data>/
# seed<k> (MLP 64-128-128-128-10; A on digits, B on rotated or pixel-permuted digits, the
# same-data pair a second digits seed); merges: RUNS/merge_digits/<pair>/<arm>/seed<k>/
# results.json; then `python docs/make_tables.py`.
#   RUNS=runs bash docs/repro_merge.sh
source "$(dirname "$0")/repro_common.sh"

endpoint() {  # endpoint DATA SEED SHIFT
  run "$RUNS/merge_digits_endpoint/$1/seed$2" \
      --config=configs/merge.py:digits_endpoint,shift=$3,seed=$(( $2 + ${4:-0} ))
}
merge() {  # merge PAIR ARM B_DATA B_SHIFT SEED ARGS...
  local pair=$1 arm=$2 b=$3 shift=$4 seed=$5; shift 5
  run "$RUNS/merge_digits/$pair/$arm/seed$seed" "$@" \
      --config.inputs.model_a="$RUNS/merge_digits_endpoint/digits/seed$seed" \
      --config.inputs.model_b="$RUNS/merge_digits_endpoint/$b/seed$seed"
}
arm_args() {  # arm -> preset arguments
  case $1 in
    wm) echo "method=merge_wm" ;;
    am) echo "method=merge_am" ;;
    ste_full) echo "method=merge_ste,data=full" ;;
    ste_coreset) echo "method=merge_ste,data=coreset" ;;
    ste_condensed) echo "method=merge_ste,data=condensed" ;;
  esac
}

for seed in $SEEDS; do
  endpoint digits "$seed" ""
  endpoint digits2 "$seed" "" 100           # the same-data pair: another seed
  endpoint digits3 "$seed" "" 400           # a third, for the 3-model merge (§6.1)
  endpoint permuted "$seed" permute_pixels:0 200
  for angle in 15 30 45 60 75 90; do endpoint rot$angle "$seed" rotate:$angle 300; done
  # same data: B is digits too (b_shift "")
  for arm in wm am ste_full; do
    merge same $arm digits2 "" "$seed" \
        --config=configs/merge.py:digits,$(arm_args $arm),b_shift=,seed=$seed
    merge same3 $arm digits3 "" "$seed" \
        --config=configs/merge.py:digits,$(arm_args $arm),b_shift=,seed=$seed
  done
  # three models (A, B = digits2, C = digits3): B and C aligned to A by weight matching, or
  # by the pairwise STE runs above, then averaged
  for arm in wm ste_full; do
    merge many3 $arm digits2 "" "$seed" \
        --config=configs/merge.py:digits,method=merge_many,b_shift=,seed=$seed \
        --config.inputs.model_c="$RUNS/merge_digits_endpoint/digits3/seed$seed" \
        $( [ $arm = ste_full ] && echo "--config.merge.perms_b=$RUNS/merge_digits/same/ste_full/seed$seed --config.merge.perms_c=$RUNS/merge_digits/same3/ste_full/seed$seed" )
  done
  condensed="$RUNS/merge_digits_condense"
  run "$condensed/digits/dc/seed$seed" --config=configs/merge.py:digits_condense,seed=$seed
  run "$condensed/rot90/dc/seed$seed" \
      --config=configs/merge.py:digits_condense,shift=rotate:90,seed=$seed
  run "$condensed/permuted/dc/seed$seed" \
      --config=configs/merge.py:digits_condense,shift=permute_pixels:0,seed=$seed
  for arm in wm am ste_full ste_coreset ste_condensed; do
    merge rot90 $arm rot90 rotate:90 "$seed" \
        --config=configs/merge.py:digits,$(arm_args $arm),b_shift=rotate:90,seed=$seed \
        --config.merge.condensed_a="$condensed/digits/dc/seed$seed" \
        --config.merge.condensed_b="$condensed/rot90/dc/seed$seed"
    merge permuted $arm permuted permute_pixels:0 "$seed" \
        --config=configs/merge.py:digits,$(arm_args $arm),b_shift=permute_pixels:0,seed=$seed \
        --config.merge.condensed_a="$condensed/digits/dc/seed$seed" \
        --config.merge.condensed_b="$condensed/permuted/dc/seed$seed"
  done
  for angle in 15 30 45 60 75; do  # the rotation sweep (90 is above)
    merge rot$angle wm rot$angle rotate:$angle "$seed" \
        --config=configs/merge.py:digits,method=merge_wm,b_shift=rotate:$angle,seed=$seed
  done
done
