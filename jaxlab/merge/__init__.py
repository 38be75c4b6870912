"""Model merging library (docs/specs/robustness_tta_merging.md §5, §6.1): `lap` (linear
assignment inside jit), `permutation` (hidden-unit permutation specs derived from a model's
computation), `matching` (weight and activation matching), `interpolate` (curves and
barriers), `repair` (BatchNorm statistics reset), `condense` (dataset condensation by
gradient matching) and `analysis` (the §6.1 singular-vector alignment). The methods that use
them are `jaxlab.methods.merge`."""
