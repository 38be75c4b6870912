"""Evaluation beyond clean accuracy: adversarial attacks (`jaxlab.eval.attacks`)."""
