"""MBDL Studio's application core: config, model catalog, live session, recording,
training, evaluation and the CLI. Qt-free: the GUI in ui/ adapts it."""

__version__ = "0.1.0"
