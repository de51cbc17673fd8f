"""moelab: dense vs Mixture-of-Experts language models at matched compute."""

__version__ = "0.1.0"
