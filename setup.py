"""jaxlab: meta-learning, sparse networks, fine-tuning, generative data, robustness and merging in JAX."""

import setuptools

setuptools.setup(
    name="jaxlab",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["jaxlab", "jaxlab.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.5",        # TFDS's random-access file format (tfds.data_source)
        "grain>=0.2.12",            # the streaming input (jaxlab.data.stream)
        "etils[epath]",             # user paths (folders, init_from) as local paths or URLs
        "importlib_resources",      # TFDS needs it to register builders from a package
        "chex>=0.1.88",
        "ml_collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "scikit-learn>=1.3",        # the embedded `digits` dataset
        "matplotlib>=3.7",          # fonts for the embedded `glyphs` dataset
        "pillow>=10.0",             # renders `glyphs`; writes sample grids
        "fonttools>=4.40",          # reads font coverage for `glyphs`
        "scipy>=1.10",
    ],
    extras_require={
        # TensorBoard events and the notebooks (run headless) are tested too
        "test": ["pytest>=7.0", "tensorboardX>=2.6", "nbclient>=0.9", "nbformat>=5.9",
                 "ipykernel>=6.0", "jupytext>=1.16",
                 "pytest-xdist>=3.5"],  # the suite runs on every core, a test file per worker
        "notebooks": ["jupyter", "jupytext>=1.16"],
        "tensorboard": ["tensorboardX>=2.6"],
        "bench": ["torch", "torchvision", "psutil"],  # benchmarks/ against PyTorch
    },
    entry_points={"console_scripts": ["jaxlab=jaxlab.main:run"]},
)
