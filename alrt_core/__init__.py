"""ALRT core: configuration, data, the factorised GPT, its optimizers, trainer and evaluation."""

__version__ = "0.1.0"
