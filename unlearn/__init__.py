"""unlearn: make large language models forget, with DeepSpeed on SLURM clusters."""

__version__ = "0.1.0"
