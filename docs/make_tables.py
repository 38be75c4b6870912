"""Builds the reproduction tables in docs/*.md from the runs' results.json files.

Runs are laid out as `RUNS/<table>/<row>/<column>/seed<k>/results.json` (the
repro scripts in docs/ write them so). For every table named in `TABLES`, this
prints, and writes into its markdown file between
`<!-- table:<name> -->` and `<!-- /table:<name> -->`, one cell per
(row, column): mean +- standard deviation over seeds of the metric (x100 for
accuracies), with the number of seeds. Nothing in a table is typed by hand.

  python docs/make_tables.py [--runs runs]
"""

import argparse
import glob
import json
import os
import re
import statistics

DOCS = os.path.dirname(os.path.abspath(__file__))

# table name -> (markdown file, metric, scale, row order, column order[, source]).
# metric None: the columns are the `test/*` metrics of each run (sinusoid: MSE after k
# steps; robustness: clean and robust accuracies) and the DERIVED ones. A metric ending in
# "/*" (e.g. "train/sparsity/*"): the rows are what the star matches, read from the runs of
# `source` = (table directory, row directory); the columns are that row's column
# directories, or the row directories when the source row is "*". A metric starting with
# "paired:" (e.g. "paired:selected/test/accuracy"): the rows are "a-b" and each cell holds
# the per-seed differences a - b over the seeds both arms have, from the runs of `source` =
# (table directory, "*"), with how many of them are >= 0. A source with a third element reads
# only that column directory (e.g. one stream of the TTA runs). A metric starting with "grid:"
# is a key template with {row} and {column} (e.g. "grid:gap/t{column}/{row}": one analysis run
# holding a metric per t), read from the runs of `source` = (table directory, row directory).
ROBUST_ARMS = ["erm", "pgd_at", "trades", "sovr", "gairat", "mail", "aft", "aft_rgkd", "aft_nr",
               "arrest", "arrest_t098"]

LT_ARMS = ["naive", "gmt", "fgmt", "oracle"]
LT_ROWS = ["trained"] + LT_ARMS + ["gmt_warm", "gmt_gm4"]
LT_ACTIVATIONS = ["none", "relu", "cnn"]
LT_INITS = ["scratch"] + LT_ARMS
LT_EPOCHS = ["e1", "e3"]

FINETUNE_ARMS = ["finetune", "l2sp", "randreg_uniform", "randreg_normal", "randreg_pretrained",
                 "adarand"]
FINETUNE_N = ["n5", "n10", "n20", "n50"]

MGR_ARMS = ["erm", "gda", "pcr", "mgr"]
MGR_FRACTIONS = ["f0.05", "f0.1", "f0.25", "f1.0"]
MGR_GAPS = ["gda-erm", "pcr-erm", "mgr-erm", "mgr-pcr"]

SSL_ARMS = ["supervised", "random_synthetic", "pseudo_conditional", "meta_gen_ssl", "fixmatch"]
SSL_K = ["k1", "k2", "k4", "k10"]
SSL_GAPS = ["meta_gen_ssl-pseudo_conditional", "meta_gen_ssl-random_synthetic",
            "pseudo_conditional-supervised", "random_synthetic-supervised",
            "meta_gen_ssl-supervised", "meta_gen_ssl-fixmatch"]
PP_ARMS = ["scratch", "kd", "pp", "pssl", "pp_pssl", "pp_pssl_uniform"]
PP_N = ["n5", "n10", "n20"]
PP_GAPS = ["pp_pssl-pp", "pp_pssl-pssl", "pp-scratch", "pssl-scratch", "kd-scratch",
           "pp_pssl-kd", "pp_pssl-pp_pssl_uniform"]

TTA_ARMS = ["source", "bn_adapt", "tent", "tent_episodic", "cafe", "cafe_no_im",
            "cafe_ungrouped", "cafe_ungrouped_shrink"]
TTA_STREAMS = ["mixed", "single", "continual", "label_shift", "batch1"]
TTA_GAPS = ["source-bn_adapt", "bn_adapt-tent", "tent-cafe", "bn_adapt-cafe",
            "cafe_no_im-cafe"]
TTA_CORRUPTIONS = ["gaussian_noise", "salt_pepper", "box_blur", "contrast", "brightness",
                   "shift"]

# Columns computed from a run's other test metrics (before scaling), for the runs that have
# them: name -> (metrics needed, function of them). NRR is the harmonic mean of clean and
# AA-lite accuracy (robustness_tta_merging.md §0.3).
MERGE_PAIRS = ["same", "same3", "rot15", "rot30", "rot45", "rot60", "rot75", "rot90", "permuted"]
MERGE_ARMS = ["wm", "am", "ste_full", "ste_condensed", "ste_coreset"]
MERGE_RANKS = [1, 2, 4, 8, 16, 32, 64]
MERGE_TRUNCATION = [f"k{k}/{what}" for k in MERGE_RANKS
                    for what in ("energy_a", "a/test_a/accuracy",
                                 "naive/double_test/accuracy_mid",
                                 "merged/double_test/accuracy_mid")]
FROZEN_ARMS = [f"dense_w{w}" for w in ("1.0", "0.7", "0.5", "0.25")] + [
    f"{split}_f{f}" for f in ("0.3", "0.5", "0.7", "0.9")
    for split in ("all_prune", "balanced", "all_lock")]
FROZEN_S = ["s0.5", "s0.7"]
WIDTHS = ["w1", "w2", "w4", "w8", "w16"]
WIDTH_DECAYS = ["wd3e-3", "wd1e-4"]
WIDTH_PROBES = [f"layer{layer}/{probe}" for probe in ("cos", "magnitude")
                for layer in (1, 2, 3, 4)] + [
                    f"layer{layer}/{probe}" for probe in ("additivity", "orthogonality")
                    for layer in (1, 2, 3)]

CF_OOD_ARMS = ["full", "diag", "shared", "proto", "untrained", "pca", "rot180", "shot1_full",
               "shot1_diag"]

DIFFUSION_T = ["t0", "t0.1", "t0.25", "t0.5", "t0.75", "t1.0"]
DIFFUSION_GRID = ["0", "0.1", "0.25", "0.5", "0.75", "1"]
DIFFUSION_GAP = ["reference_accuracy", "confidence", "loss", "centroid_distance", "spread",
                 "precision", "recall", "density", "coverage", "pixel_distance",
                 "frechet_distance"]

DERIVED = {
    "nrr": (("accuracy", "robust_accuracy/aa_lite"),
            lambda sa, ra: 2 * sa * ra / max(sa + ra, 1e-12)),
}

TABLES = {
    "maml_sinusoid": ("maml.md", None, 1.0, ["maml", "pretrained"],
                      ["mse_step0", "mse_step1", "mse_step10"]),
    "maml_glyphs": ("maml.md", "test/accuracy", 100.0,
                    ["maml", "fomaml", "anil", "boil", "scratch", "maml_3k", "fomaml_3k"],
                    ["5w1s", "5w5s"]),
    "supermask_digits": ("supermask.md", "test/accuracy", 100.0,
                         ["edge_popup", "edge_popup_raw", "iterand_r0", "iterand", "iterand_r1.0",
                          "edge_popup_signed", "iterand_signed", "erm"], ["w0.25", "w0.5", "w1", "w2"]),
    "meta_ticket_width": ("supermask.md", "test/accuracy", 100.0, ["maml", "meta_ticket"],
                          [f"f{f}_5w{k}s" for k in (1, 5) for f in (1, 2, 4, 8)]),
    "meta_ticket_sparsity": ("supermask.md", "train/sparsity/*", 100.0,
                             ["Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel",
                              "Dense_3/kernel", "all"],
                             [f"f{f}_5w{k}s" for k in (1, 5) for f in (1, 2, 4, 8)],
                             ("meta_ticket_width", "meta_ticket")),
    "meta_ticket_sinusoid": ("supermask.md", None, 1.0, ["maml", "meta_ticket"],
                             ["mse_step0", "mse_step1", "mse_step5"]),
    "robust_digits": ("robust.md", None, 100.0, ROBUST_ARMS,
                      ["accuracy", "robust_accuracy/pgd10", "robust_accuracy/pgd100",
                       "robust_accuracy/apgd_ce", "robust_accuracy/aa_lite", "nrr",
                       "feature_cosine"]),
    "robust_digits_margins": ("robust.md", "test/adv_margin_hist/*", 100.0,
                              ["-inf..-4", "-4..-2", "-2..-1", "-1..0", "0..1", "1..2", "2..4",
                               "4..8", "8..inf"], ROBUST_ARMS, ("robust_digits", "*")),
    "robust_digits_arrest": ("robust.md", "train/*", 100.0,
                             ["nr_fraction", "drift_cosine", "rgkd"],
                             ["aft", "aft_rgkd", "aft_nr", "arrest", "arrest_t098"],
                             ("robust_digits", "*")),
    "robust_digits_logit_scale": ("robust.md", None, 100.0,
                                  ["erm_x1", "erm_x10000", "pgd_at_x1", "pgd_at_x10000"],
                                  ["accuracy", "robust_accuracy/pgd10",
                                   "robust_accuracy/apgd_ce", "robust_accuracy/apgd_dlr"]),
    "finetune_digits": ("finetune.md", "selected/test/accuracy", 100.0, FINETUNE_ARMS,
                        FINETUNE_N),
    "finetune_digits_norm": ("finetune.md", "selected/test/feature_norm", 1.0, FINETUNE_ARMS,
                             FINETUNE_N, ("finetune_digits", "*")),
    "finetune_digits_entropy": ("finetune.md", "selected/test/feature_entropy", 1.0,
                                FINETUNE_ARMS, FINETUNE_N, ("finetune_digits", "*")),
    "finetune_glyphs": ("finetune.md", "selected/test/accuracy", 100.0, FINETUNE_ARMS, ["n5"]),
    "finetune_glyphs_norm": ("finetune.md", "selected/test/feature_norm", 1.0, FINETUNE_ARMS,
                             ["n5"], ("finetune_glyphs", "*")),
    "finetune_glyphs_entropy": ("finetune.md", "selected/test/feature_entropy", 1.0,
                                FINETUNE_ARMS, ["n5"], ("finetune_glyphs", "*")),
    "mgr_generator": ("mgr.md", "quality/*", 1.0,
                      ["frechet_distance", "sample_accuracy", "real_accuracy"],
                      ["steps300", "steps3000"], ("mgr_generator", "cgan")),
    "mgr_digits": ("mgr.md", "selected/test/accuracy", 100.0, MGR_ARMS, MGR_FRACTIONS),
    "mgr_digits_final": ("mgr.md", "test/accuracy", 100.0, MGR_ARMS, MGR_FRACTIONS,
                         ("mgr_digits", "*")),
    "mgr_digits_train": ("mgr.md", "train/*", 1.0,
                         ["reg", "meta/lookahead_loss", "meta/gain", "meta/grad_norm",
                          "meta/latent_shift"], MGR_FRACTIONS, ("mgr_digits", "mgr")),
    "mgr_digits_gaps": ("mgr.md", "paired:selected/test/accuracy", 100.0, MGR_GAPS,
                        MGR_FRACTIONS, ("mgr_digits", "*")),
    "mgr_digits_sum": ("mgr.md", "selected/test/accuracy", 100.0, ["pcr", "mgr"],
                       MGR_FRACTIONS),
    "mgr_glyphs_generator": ("mgr.md", "quality/*", 1.0,
                             ["frechet_distance", "sample_accuracy", "real_accuracy"],
                             ["steps500"], ("mgr_glyphs_generator", "cgan")),
    "mgr_glyphs": ("mgr.md", "selected/test/accuracy", 100.0, MGR_ARMS, ["n15"]),
    "mgr_glyphs_gaps": ("mgr.md", "paired:selected/test/accuracy", 100.0, MGR_GAPS, ["n15"],
                        ("mgr_glyphs", "*")),
    "ssl_generator": ("ssl.md", "quality/*", 1.0,
                      ["frechet_distance", "sample_accuracy", "real_accuracy"], ["steps3000"],
                      ("ssl_generator", "cgan")),
    "ssl_digits": ("ssl.md", "test/accuracy", 100.0, SSL_ARMS, SSL_K),
    "ssl_digits_gaps": ("ssl.md", "paired:test/accuracy", 100.0, SSL_GAPS, SSL_K,
                        ("ssl_digits", "*")),
    "ssl_digits_train": ("ssl.md", "train/*", 1.0,
                         ["unsup", "meta/resemblance", "meta/lookahead_loss", "meta/grad_norm",
                          "meta/anchor_class_agreement", "meta/condition_entropy"], SSL_K,
                         ("ssl_digits", "meta_gen_ssl")),
    "ssl_digits_fixmatch": ("ssl.md", "train/*", 1.0,
                            ["mask_rate", "pseudo_label_accuracy"], SSL_K,
                            ("ssl_digits", "fixmatch")),
    "pp_pssl_digits": ("ssl.md", "selected/test/accuracy", 100.0, PP_ARMS, PP_N),
    "pp_pssl_digits_gaps": ("ssl.md", "paired:selected/test/accuracy", 100.0, PP_GAPS, PP_N,
                            ("pp_pssl_digits", "*")),
    "pp_pssl_digits_final": ("ssl.md", "test/accuracy", 100.0, PP_ARMS, PP_N,
                             ("pp_pssl_digits", "*")),
    "pp_pssl_digits_final_gaps": ("ssl.md", "paired:test/accuracy", 100.0, PP_GAPS, PP_N,
                                  ("pp_pssl_digits", "*")),
    "pp_pssl_digits_selected_step": ("ssl.md", "selected/step", 1.0, PP_ARMS, PP_N,
                                     ("pp_pssl_digits", "*")),
    "pp_pssl_digits_train": ("ssl.md", "train/*", 1.0, ["mask_rate", "condition_entropy"],
                             PP_N, ("pp_pssl_digits", "pp_pssl")),
    "tta_digits": ("tta.md", "online/error", 100.0, TTA_ARMS, TTA_STREAMS),
    "tta_digits_offline": ("tta.md", "stream/error", 100.0, TTA_ARMS, TTA_STREAMS,
                           ("tta_digits", "*")),
    "tta_digits_gaps": ("tta.md", "paired:online/error", 100.0, TTA_GAPS, TTA_STREAMS,
                        ("tta_digits", "*")),
    "tta_digits_feature_gap": ("tta.md", "stream/feature_gap", 1.0, TTA_ARMS, TTA_STREAMS,
                               ("tta_digits", "*")),
    "tta_digits_mixed_corruptions": ("tta.md", "online/*", 100.0,
                                     [f"{c}/5/error" for c in TTA_CORRUPTIONS], TTA_ARMS,
                                     ("tta_digits", "*", "mixed")),
    "tta_digits_single_corruptions": ("tta.md", "online/*", 100.0,
                                      [f"{c}/5/error" for c in TTA_CORRUPTIONS], TTA_ARMS,
                                      ("tta_digits", "*", "single")),
    "merge_digits": ("merge.md", "merged/double_test/accuracy_mid", 100.0, MERGE_PAIRS,
                     MERGE_ARMS),
    "merge_digits_naive": ("merge.md", "naive/double_test/accuracy_mid", 100.0, MERGE_PAIRS,
                           ["wm"], ("merge_digits", "*", "wm")),
    "merge_digits_ensemble": ("merge.md", "ensemble/double_test/accuracy_mid", 100.0,
                              MERGE_PAIRS, ["wm"], ("merge_digits", "*", "wm")),
    "merge_digits_barrier": ("merge.md", "merged/accuracy_barrier", 100.0, MERGE_PAIRS,
                             MERGE_ARMS, ("merge_digits", "*")),
    "merge_digits_distance": ("merge.md", "distance/ratio", 1.0, MERGE_PAIRS, MERGE_ARMS,
                              ("merge_digits", "*")),
    "merge_digits_alignment": ("merge.md", "alignment/merged/R", 1.0, MERGE_PAIRS, MERGE_ARMS,
                               ("merge_digits", "*")),
    "merge_digits_alignment_a5": ("merge.md", "alignment/merged/A_5", 1.0, MERGE_PAIRS,
                                  MERGE_ARMS, ("merge_digits", "*")),
    "merge_digits_alignment_naive": ("merge.md", "alignment/naive/R", 1.0, MERGE_PAIRS,
                                     ["wm"], ("merge_digits", "*", "wm")),
    "merge_digits_truncation": ("merge.md", "truncation/*", 100.0, MERGE_TRUNCATION,
                                ["wm", "am", "ste_full"], ("merge_digits", "same")),
    "merge_glyphs": ("merge.md", "merged/double_test/accuracy_mid", 100.0, ["cross", "same"],
                     ["wm", "am", "ste_full"]),
    "merge_glyphs_naive": ("merge.md", "naive/double_test/accuracy_mid", 100.0,
                           ["cross", "same"], ["wm"], ("merge_glyphs", "*", "wm")),
    "merge_glyphs_ensemble": ("merge.md", "ensemble/double_test/accuracy_mid", 100.0,
                              ["cross", "same"], ["wm"], ("merge_glyphs", "*", "wm")),
    "merge_glyphs_endpoints": ("merge.md", "endpoint_a/test_a/accuracy", 100.0,
                               ["cross", "same"], ["wm"], ("merge_glyphs", "*", "wm")),
    "merge_glyphs_alignment": ("merge.md", "alignment/merged/R", 1.0, ["cross", "same"],
                               ["wm", "am", "ste_full"], ("merge_glyphs", "*")),
    "merge_width_endpoint": ("merge.md", "endpoint_a/test_a/accuracy", 100.0, WIDTHS,
                             WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_naive": ("merge.md", "naive/double_test/accuracy_mid", 100.0, WIDTHS,
                          WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_ensemble": ("merge.md", "ensemble/double_test/accuracy_mid", 100.0, WIDTHS,
                             WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_wm": ("merge.md", "merged/double_test/accuracy_mid", 100.0, WIDTHS,
                       WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_accuracy_barrier": ("merge.md", "naive/accuracy_barrier", 100.0, WIDTHS,
                                     WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_loss_barrier": ("merge.md", "naive/loss_barrier", 1.0, WIDTHS, WIDTH_DECAYS,
                                 ("merge_width", "*")),
    "merge_width_calibrated_barrier": ("merge.md", "naive/calibrated_loss_barrier", 1.0,
                                       WIDTHS, WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_temperature": ("merge.md", "naive/temperature_ratio", 1.0, WIDTHS,
                                WIDTH_DECAYS, ("merge_width", "*")),
    "merge_width_rank": ("merge.md", "rank/a/layer2", 1.0, WIDTHS, WIDTH_DECAYS,
                         ("merge_width", "*")),
    "merge_width_probes": ("merge.md", "lewc/naive/*", 1.0, WIDTH_PROBES, WIDTHS,
                           ("merge_width", "*", "wd3e-3")),
    "merge_width_probes_low_wd": ("merge.md", "lewc/naive/*", 1.0, WIDTH_PROBES, WIDTHS,
                                  ("merge_width", "*", "wd1e-4")),
    "frozen_slt": ("frozen_slt.md", "test/accuracy", 100.0, FROZEN_ARMS, FROZEN_S),
    "frozen_slt_bits": ("frozen_slt.md", "ticket/mask_bits", 1.0, FROZEN_ARMS, FROZEN_S,
                        ("frozen_slt", "*")),
    "frozen_slt_sparsity": ("frozen_slt.md", "ticket/sparsity", 100.0, FROZEN_ARMS, FROZEN_S,
                            ("frozen_slt", "*")),
    "merge_digits_many": ("merge.md", "test_a/accuracy", 100.0, ["many3"], ["wm", "ste_full"],
                          ("merge_digits", "many3")),
    "merge_digits_condense": ("merge.md", "condensed/test/accuracy", 100.0,
                              ["digits", "rot90", "permuted"], ["dc"]),
    "merge_digits_coreset": ("merge.md", "coreset/test/accuracy", 100.0,
                             ["digits", "rot90", "permuted"], ["dc"],
                             ("merge_digits_condense", "*")),
    "learning_transfer": ("learning_transfer.md", "test/accuracy", 100.0, LT_ROWS,
                          LT_ACTIVATIONS),
    "learning_transfer_best": ("learning_transfer.md", "selected/test/accuracy", 100.0,
                               LT_ARMS, LT_ACTIVATIONS, ("learning_transfer", "*")),
    "learning_transfer_best_step": ("learning_transfer.md", "transfer/best_step", 1.0,
                                    LT_ARMS, LT_ACTIVATIONS, ("learning_transfer", "*")),
    "learning_transfer_ft_none": ("learning_transfer.md", "test/accuracy", 100.0, LT_INITS,
                                  LT_EPOCHS),
    "learning_transfer_ft_relu": ("learning_transfer.md", "test/accuracy", 100.0, LT_INITS,
                                  LT_EPOCHS),
    "diffusion_ddpm": ("diffusion.md", "quality/*", 1.0,
                       ["frechet_distance", "sample_accuracy", "real_accuracy"], ["digits"],
                       ("diffusion_ddpm", "ddpm")),
    "diffusion_accuracy": ("diffusion.md", "test/accuracy", 100.0, ["real", "g1", "g3"],
                           DIFFUSION_T),
    "diffusion_gap_g1": ("diffusion.md", "grid:gap/t{column}/{row}", 1.0, DIFFUSION_GAP,
                         DIFFUSION_GRID, ("diffusion_gap", "g1")),
    "diffusion_gap_g3": ("diffusion.md", "grid:gap/t{column}/{row}", 1.0, DIFFUSION_GAP,
                         DIFFUSION_GRID, ("diffusion_gap", "g3")),
    "closed_form_ssl": ("closed_form.md", None, 100.0, ["full", "no_unlabeled",
                                                       "no_row_attention"],
                        ["accuracy", "unlabeled_accuracy", "baseline/logistic_accuracy",
                         "baseline/label_spreading_accuracy"]),
    "closed_form_ood": ("closed_form.md", None, 100.0, CF_OOD_ARMS,
                        ["auroc", "id_accuracy", "baseline/raw_gmm_auroc"]),
    "closed_form_pu": ("closed_form.md", None, 100.0, ["gauss", "gauss_p50_u200", "digits"],
                       ["accuracy", "accuracy_estimated_prior", "prior_error",
                        "baseline/nnpu_accuracy", "baseline/upu_accuracy",
                        "baseline/ulsif_accuracy"]),
    "closed_form_rdre": ("closed_form.md", None, 1.0, ["gauss", "gauss_alpha0", "gauss_n100",
                                                       "outlier"],
                         ["mse", "baseline/rulsif_mse", "outlier_auroc",
                          "baseline/rulsif_outlier_auroc"]),
    "closed_form_rdre_comparison": ("closed_form.md", "comparison/*", 1.0,
                                    ["meta_spearman", "rulsif_spearman"],
                                    ["gauss", "gauss_alpha0", "gauss_n100"],
                                    ("closed_form_rdre", "*")),
    "tta_digits_align": ("tta.md", "train/align", 1.0,
                         ["cafe", "cafe_no_im", "cafe_ungrouped", "cafe_ungrouped_shrink"],
                         ["mixed"], ("tta_digits", "*", "mixed")),
}


def collect(runs: str, table: str):
  """{(row, column): [values over seeds]} for one table."""
  _, metric, scale, _, _, *source = TABLES[table]
  directory, only_row, *only_column = source[0] if source else (table, "*")
  if metric and metric.startswith("paired:"):
    return collect_paired(runs, table)
  cells = {}
  for path in glob.glob(os.path.join(runs, directory, only_row, (only_column or ["*"])[0],
                                     "seed*", "results.json")):
    row, column = path.split(os.sep)[-4:-2]
    with open(path) as f:
      results = json.load(f)
    if metric and metric.startswith("grid:"):
      _, _, _, rows, columns, *_ = TABLES[table]
      for r in rows:
        for c in columns:
          key = metric[len("grid:"):].format(row=r, column=c)
          if key in results:
            cells.setdefault((r, c), []).append(scale * results[key])
      continue
    if metric is None:
      test = {k[len("test/"):]: v for k, v in results.items()
              if k.startswith("test/") and not k.endswith("_ci95")}
      for name, (needs, derive) in DERIVED.items():
        if all(k in test for k in needs):
          test[name] = derive(*(test[k] for k in needs))
      for key, value in test.items():
        cells.setdefault((row, key), []).append(scale * value)
    elif metric.endswith("/*"):
      prefix = metric[:-1]
      # with one source row the columns are its column directories, else the row directories
      across = column if only_row != "*" else row
      for key, value in results.items():
        if key.startswith(prefix) and not key.endswith("_ci95"):
          cells.setdefault((key[len(prefix):], across), []).append(scale * value)
    elif metric in results:  # (a table over some arms' metric, e.g. CAFe's train/align)
      cells.setdefault((row, column), []).append(scale * results[metric])
  return cells


def collect_paired(runs: str, table: str):
  """{("a-b", column): [a - b for each seed both arms have]} for a "paired:" table."""
  _, metric, scale, rows, _, (directory, _) = TABLES[table]
  by_seed = {}
  for path in glob.glob(os.path.join(runs, directory, "*", "*", "seed*", "results.json")):
    arm, column, seed = path.split(os.sep)[-4:-1]
    with open(path) as f:
      by_seed[(arm, column, seed)] = scale * json.load(f)[metric[len("paired:"):]]
  cells = {}
  for row in rows:
    a, b = row.split("-")
    for (arm, column, seed), value in sorted(by_seed.items()):
      if arm == a and (b, column, seed) in by_seed:
        cells.setdefault((row, column), []).append(value - by_seed[(b, column, seed)])
  return cells


def environments(runs: str, table: str) -> str:
  """What produced the runs behind a table (their results.json's `provenance`), counted:
  "12 runs: jaxlab 0.1.0 @ 1a2b3c4d (dirty), jax 0.10.2, cpu x1 (cpu), 1 process"."""
  _, metric, _, _, _, *source = TABLES[table]
  directory, only_row, *only_column = source[0] if source else (table, "*")
  if metric and metric.startswith("paired:"):
    only_row = "*"
  counts = {}
  for path in glob.glob(os.path.join(runs, directory, only_row, (only_column or ["*"])[0],
                                     "seed*", "results.json")):
    with open(path) as f:
      p = json.load(f).get("provenance")
    if p is None:
      line = "not recorded (runs before results.json carried provenance)"
    else:
      code = p["jaxlab"].get("commit", "")[:8] or "not a checkout"
      line = (f"jaxlab {p['jaxlab']['version']} @ {code}"
              + (" (dirty)" if p["jaxlab"].get("dirty") else "")
              + f", jax {p['packages']['jax']}, {p['backend']} x{p['device_count']} "
              f"({p['device_kind']}), {p['process_count']} process"
              + ("es" if p["process_count"] > 1 else ""))
    counts[line] = counts.get(line, 0) + 1
  return "; ".join(f"{n} runs: {line}" for line, n in sorted(counts.items()))


def _mean_and_spread(mean: float, spread: float) -> str:
  """Two decimals, or three significant digits when both are below 0.01 in magnitude
  (meta-gradient norms)."""
  form = ".2e" if 0 < max(abs(mean), spread) < 0.01 else ".2f"
  return f"{mean:{form}} +- {spread:{form}}"


def render(table: str, cells) -> str:
  _, metric, scale, rows, columns, *_ = TABLES[table]
  paired = metric is not None and metric.startswith("paired:")
  rows = [r for r in rows if any((r, c) in cells for c in columns)]
  columns = [c for c in columns if any((r, c) in cells for r in rows)]
  lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for row in rows:
    out = []
    for column in columns:
      values = cells.get((row, column), [])
      if not values:
        out.append("")
        continue
      spread = statistics.stdev(values) if len(values) > 1 else 0.0
      cell = f"{_mean_and_spread(statistics.mean(values), spread)} (n={len(values)})"
      if paired:
        cell += f", {sum(v >= 0 for v in values)}/{len(values)} >= 0"
      out.append(cell)
    lines.append(f"| {row} | " + " | ".join(out) + " |")
  unit = ("mean +- std over seeds" + ("" if metric is None else " of " + (
      f"the per-seed difference in {metric[len('paired:'):]}" if paired else metric) + (
      f" x{scale:g}" if scale != 1 else "")))
  return "\n".join(lines) + f"\n\n({unit}; generated by docs/make_tables.py)"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs")
  args = parser.parse_args()
  for table, (doc, *_rest) in TABLES.items():
    cells = collect(args.runs, table)
    if not cells:
      continue
    text = render(table, cells) + f"\n\nEnvironment: {environments(args.runs, table)}."
    print(f"## {table}\n{text}\n")
    path = os.path.join(DOCS, doc)
    with open(path) as f:
      content = f.read()
    pattern = re.compile(rf"(<!-- table:{table} -->\n).*?(<!-- /table:{table} -->)", re.S)
    if not pattern.search(content):
      raise SystemExit(f"{path} has no <!-- table:{table} --> markers")
    with open(path, "w") as f:
      f.write(pattern.sub(lambda m: m.group(1) + text + "\n" + m.group(2), content))


if __name__ == "__main__":
  main()
