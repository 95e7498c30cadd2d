"""llmlab: the helpers that two or more labs reuse."""

__version__ = "0.1.0"
