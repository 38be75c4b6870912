"""Closed-form meta-learners (jaxlab/methods/closed_form.py; docs/specs/closed_form_meta_learning.md
§2-§4 (g): CPU-scale settings on the embedded digits and procedural tasks, nothing downloaded).

  python -m jaxlab.main --config=configs/closed_form.py:ood_digits --workdir=runs/ood
  python -m jaxlab.main --config=configs/closed_form.py:ood_digits,encoder=pca --workdir=runs/ood_pca

Every run meta-trains on the meta-training tasks and reports, on `episodes.eval_episodes` fixed
tasks of each evaluation split (`validation`: other draws from the meta-training classes or
laws; `test`: unseen classes, or fresh laws), the meta-learner's metrics beside the per-task
baselines' (`baseline/*`). Adam 1e-3, gradient clipping at norm 5, `episodes.meta_batch` tasks
a step.

Presets (`:name[,key=value]`):
  ssl_tables     §1(g): 2-way tasks with `shots` (1) labelled rows a class, `unlabeled` (20)
                 unlabelled rows and 10 queries a class; meta-trained on procedural tables of
                 2-10 attributes, tested on iris / wine / breast_cancer / digits (2-20 random
                 attributes, random class pairs); VFSA H = 32, 2 layers, 4 heads, K = 32, 3 EM
                 steps; `use_unlabeled`, `row_attention` (the ablations), `steps` (3,000).
  ood_digits     §2(g): 2 in-distribution digit classes of 0-5 with `shots` (5) examples each,
                 8 ID + 16 OoD queries (a third class), MLP encoder 64-128-128-16; test tasks
                 from classes 6-9; `covariance` (full | diag | shared), `score` (gmm |
                 proto), `encoder` (network | pca: PCA-16 of the meta-training images, no
                 training: add train.steps=0), `steps` (3,000), `rotation` (degrees: each
                 meta-training task's images rotated by one angle in +-rotation, §2(g)'s
                 optional domains; 0: none).
  pu_gauss       §3(g) synthetic: 4-d Gaussian P and N laws per task, pi ~ U[0.2, 0.8],
                 |P| = `positives` (10), |U| = `unlabeled` (50), 50 labelled queries.
  pu_digits      §3(g) digits: positive class vs the other classes of 0-5 (test: 6-9).
  rdre_gauss     §4(g): Gaussian pairs in 3-d, alpha (0.5), |A| = |B| = `support` (30);
                 MSE against the true r_alpha on 200 mixture points; dataset comparison.
  rdre_outlier   §4(g) outlier detection: A = a clean digit class, B = that class with 10% of
                 other classes; AUROC of -r on B (train 0-5, test 6-9).
  tiny_ssl, tiny_ood, tiny_pu, tiny_rdre
                 a few steps on small tasks; for tests.
"""

import ml_collections

from jaxlab.config import base_config, presets


def _closed_form(method, source, steps, **fields):
  c = base_config()
  c.method = method
  c.data.eval_splits = "validation,test"
  c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=(128, 128)))
  c.episodes = ml_collections.ConfigDict(dict(meta_batch=16, eval_episodes=300,
                                              eval_meta_batch=100, eval_seed=0))
  c.meta = ml_collections.ConfigDict(dict(task_parallel="auto", task_groups=8))
  c.closed_form = ml_collections.ConfigDict(dict(
      source=source, train_classes="0-5", test_classes="6-9",
      # ood: tasks, the mixture and its meta-loss
      ways=2, shots=5, queries=8, covariance="full", shrink=0.0, score="gmm",
      encoder="network", pca_dim=16, eps_init=0.1, tau=1.0, aux_ce=0.0, baseline_eps=0.1,
      task_rotation=0.0,
      # ssl: tables with heterogeneous attributes, the VFSA network and EM
      max_attributes=20, train_attributes="2-10", test_attributes="2-20",
      test_tables="iris,wine,breast_cancer,digits", width=32, heads=4, layers=2,
      em_steps=3, temperature_init=1.0, use_unlabeled=True, row_attention=True,
      baseline_l2=1e-3, spreading_alpha=0.2,
      # pu / ratio: tasks
      positives=10, unlabeled=50, prior_low=0.2, prior_high=0.8, dim=4, spread=1.5,
      alpha=0.5, support_a=30, support_b=30, eval_points=200, outlier_fraction=0.1,
      # pu / ratio: the set-conditioned embedding and the closed form
      embedding=32, hidden=(64, 64), summary=32, shared_eta=False, nonnegative=False,
      lam_init=0.1, kappa=0.1, clip_ratio=True,
      # the per-task baselines (kernel uLSIF / RuLSIF ridge, linear nnPU / uPU by GD)
      baseline_lam=0.1, baseline_steps=200, baseline_lr=0.5,
      # meta_rdre's dataset-comparison report (0: none)
      comparison_tasks=0, comparison_seed=0))
  c.closed_form.update(fields)
  c.optimizer.update(dict(name="adam", learning_rate=1e-3, grad_clip_norm=5.0))
  c.train.update(dict(steps=steps, eval_every=max(1, steps // 3), checkpoint_every=steps,
                      log_every=max(1, steps // 10)))
  return c


def ssl_tables(shots=1, unlabeled=20, use_unlabeled=True, row_attention=True, steps=3000):
  c = _closed_form("meta_ssl", "tables", steps, ways=2, shots=shots, unlabeled=unlabeled,
                   queries=10, use_unlabeled=use_unlabeled, row_attention=row_attention)
  c.closed_form.update(dict(embedding=32, baseline_steps=200, baseline_lr=0.5))
  return c


def ood_digits(shots=5, covariance="full", score="gmm", encoder="network", steps=3000,
               rotation=0.0):
  c = _closed_form("meta_ood", "ood", steps, shots=shots, covariance=covariance, score=score,
                   encoder=encoder, task_rotation=rotation)
  c.closed_form.embedding = 16
  return c


def pu_gauss(positives=10, unlabeled=50, steps=3000):
  return _closed_form("meta_pu", "pu_gauss", steps, positives=positives, unlabeled=unlabeled,
                      queries=50)


def pu_digits(positives=10, unlabeled=50, steps=3000):
  return _closed_form("meta_pu", "pu", steps, positives=positives, unlabeled=unlabeled,
                      queries=50)


def rdre_gauss(support=30, alpha=0.5, steps=3000):
  return _closed_form("meta_rdre", "ratio_gauss", steps, support_a=support, support_b=support,
                      queries=support, alpha=alpha, dim=3, shared_eta=True,
                      comparison_tasks=100)


def rdre_outlier(support=30, alpha=0.5, steps=3000):
  return _closed_form("meta_rdre", "ratio_outlier", steps, support_a=support, support_b=support,
                      queries=support, alpha=alpha, shared_eta=True)


def _tiny(c):
  c.episodes.update(dict(meta_batch=4, eval_episodes=8, eval_meta_batch=8))
  c.model.hidden = (16,)
  c.closed_form.update(dict(hidden=(16,), summary=8, embedding=8, baseline_steps=20))
  return c


def tiny_ssl(steps=6):
  c = _tiny(ssl_tables(shots=2, unlabeled=6, steps=steps))
  c.closed_form.update(dict(width=8, heads=2, layers=1, embedding=4, queries=3,
                            max_attributes=6, train_attributes="2-4", test_attributes="2-6"))
  return c


def tiny_ood(steps=6):
  c = _tiny(ood_digits(steps=steps))
  c.closed_form.embedding = 4
  return c


def tiny_pu(steps=6):
  return _tiny(pu_gauss(steps=steps))


def tiny_rdre(steps=6):
  c = _tiny(rdre_gauss(support=10, steps=steps))
  c.closed_form.update(dict(comparison_tasks=4, eval_points=50))
  return c


DEFAULT = "ood_digits"
# the presets in rows of `jaxlab presets` and the README's table (jaxlab.catalog)
ROWS = [
    ("ssl_tables", "meta-SSL across attribute spaces (§1): the VFSA network and prototype EM "
     "on procedural tables (2-10 attributes), tested on scikit-learn's bundled tables; "
     "`shots`, `unlabeled`, `use_unlabeled`, `row_attention`"),
    ("ood_digits", "meta OoD detection (§2): class Gaussians fitted in closed form in a "
     "meta-learned latent space, 2-way 5-shot digits tasks (train 0-5, test 6-9); "
     "`covariance`, `score`, `encoder=pca`"),
    ("pu_gauss, pu_digits", "meta PU classification (§3): uLSIF of p_P / p_U in a "
     "set-conditioned embedding, on synthetic Gaussian or digits tasks"),
    ("rdre_gauss, rdre_outlier", "meta relative density-ratio estimation (§4): RuLSIF in a "
     "set-conditioned embedding; Gaussian pairs (MSE, dataset comparison) or digits outliers"),
    ("tiny_ssl, tiny_ood, tiny_pu, tiny_rdre", "a few steps on small tasks; for tests"),
]

PRESETS = {"ssl_tables": ssl_tables, "ood_digits": ood_digits, "pu_gauss": pu_gauss,
           "pu_digits": pu_digits, "rdre_gauss": rdre_gauss, "rdre_outlier": rdre_outlier,
           "tiny_ssl": tiny_ssl, "tiny_ood": tiny_ood, "tiny_pu": tiny_pu,
           "tiny_rdre": tiny_rdre}


def get_config(arg=None):
  return presets(arg, PRESETS, DEFAULT, "configs/closed_form.py")
