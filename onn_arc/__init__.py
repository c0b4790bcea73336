"""onn-arc: train and run a Tiny-ONN (Sparse Bayesian Layers) on ARC-AGI puzzles."""

__version__ = "0.1.0"
