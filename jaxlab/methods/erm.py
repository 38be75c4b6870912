"""`erm`: empirical risk minimisation, plain supervised training.

The baseline every other family is measured against (Base of MGR, supervised of the SSL
studies, scratch of PP + P-SSL, the standard-training arm of the robustness tables). Loss:
softmax cross-entropy (optional `train.label_smoothing`); BatchNorm running statistics,
when the model has them, are updated in `model_state`. The step is the library's
(`jaxlab.train.supervised`) because PGD-AT takes the same step on adversarial inputs; the
evaluation (`jaxlab.eval.classification`) adds robust accuracies when the config has an
`adv` block naming attacks.

Variants: `erm`.
"""

from jaxlab.data import tasks
from jaxlab.eval import classification
from jaxlab.train import supervised
from jaxlab.train.protocol import Variant

VARIANTS = {"erm": Variant()}

make_task = tasks.supervised
init = supervised.init
train_step = supervised.classification_step
eval_step = classification.eval_step
