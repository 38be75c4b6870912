"""Model merging library (docs/specs/robustness_tta_merging.md §5, §6): linear assignment
inside jit (`lap`). Permutation specs, weight/activation matching and interpolation build on
it (issue 22, in progress)."""
