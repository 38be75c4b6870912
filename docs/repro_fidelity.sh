#!/usr/bin/env bash
# Re-runs the arms that the fidelity corrections of issue 20 change, with the canonical
# scripts' exact commands (ONLY picks the arms; the other arms of those tables are unchanged
# by the corrections):
#   1. meta_gen_ssl's lazy Adam on the latents: every generator-fed arm of §3(g) (meta_gen_ssl,
#      and pseudo_conditional and random_synthetic, which read the same generator, so that the
#      three share one generator run; supervised and fixmatch read none);
#   2. Meta-ticket's warm-up and re-randomisation timing: the meta_ticket arms of the glyphs
#      width study and of the sinusoid hybrid;
#   3. edge-popup's score initialiser: the edge_popup, edge_popup_raw and edge_popup_signed
#      rows of §3(g), and the new iterand_r0 control (edge-popup's step with IteRand's ranking
#      and score initialiser).
# Then copy config.json/results.json into docs/runs and `python docs/make_tables.py --runs
# docs/runs`. The runs in docs/runs were made at commit ef09246 by the first version of this
# script (fb5b996), which spelled the same commands out and ran two at a time.
#   RUNS=runs bash docs/repro_fidelity.sh       (JOBS=2 runs repro_ssl.sh two at a time)
set -euo pipefail
here="$(dirname "$0")"
ONLY='/supermask_digits/(edge_popup|edge_popup_raw|edge_popup_signed|iterand_r0)/' \
  bash "$here/repro_supermask.sh"
ONLY='/meta_ticket_(width|sinusoid)/meta_ticket/' bash "$here/repro_supermask.sh"
ONLY='/ssl_(source|generator)/|/ssl_digits/(meta_gen_ssl|pseudo_conditional|random_synthetic)/' \
  SEEDS=${SSL_SEEDS:-"0 1 2 3 4 5 6 7 8 9"} bash "$here/repro_ssl.sh"
