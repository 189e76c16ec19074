"""nextplay: next-track prediction on Spark, Delta, Petastorm, PyTorch, Horovod and MLflow."""
from setuptools import find_packages, setup

setup(
    name="nextplay",
    version="0.2.0",
    description="Predict the next track a listener will play: Spark + Delta + PyTorch RNN + MLflow",
    python_requires=">=3.11",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    # The confs the CLI resolves by name (`--conf databricks`, see nextplay.config.resolve_conf): a
    # wheel has no conf/ folder beside it, so they travel inside the package.
    package_data={"nextplay": ["conf/*.yml"]},
    # Spark and its Arrow/NumPy companions are an extra: a Databricks runtime ships its own and a
    # wheel that required them would make pip replace the runtime's copies.
    install_requires=["pyyaml>=6", "tqdm>=4.60"],
    extras_require={
        "local": ["pyspark>=4.0,<4.1", "delta-spark>=4.0,<4.5", "numpy>=1.24,<2", "pandas>=2,<3", "pyarrow>=12,<15"],
        "train": ["torch>=2.1", "scipy>=1.10", "petastorm>=0.12.1", "mlflow>=3.0", "matplotlib>=3.5",
                  "faiss-cpu>=1.8", "psutil>=5.9"],
        "horovod": ["horovod==0.28.1"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "pyflakes>=3.2", "hypothesis>=6.100", "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["nextplay=nextplay.cli:main"]},
)
