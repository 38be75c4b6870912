"""jaxlab: published methods in meta-learning, sparse networks, fine-tuning,
generative data, robustness and model merging, as pure jitted JAX steps.

    import jaxlab
    config = jaxlab.load_config("configs/erm.py:digits")
    results = jaxlab.train_and_evaluate(config, "/tmp/runs/digits")

or, step by step: `method = jaxlab.get_method(config.method)`, then
`method.make_task`, `method.init`, `method.train_step`, `method.eval_step`
(`jaxlab.load_inputs(method, config, spec)` reads the runs a method reads, `config.inputs`).
"""

from jaxlab.config import load_config
from jaxlab.errors import UserError
from jaxlab.methods import get_method
from jaxlab.train import train_and_evaluate
from jaxlab.train.inputs import load_method_inputs as load_inputs

__version__ = "0.1.0"
__all__ = ["load_config", "get_method", "load_inputs", "train_and_evaluate", "UserError"]
