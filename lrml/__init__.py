"""LRML (Tay, Luu, Hui, WWW 2018) and its baselines on MovieLens, in plain PyTorch."""
__version__ = "0.1.0"
