"""specrej-local: Best-of-N and Speculative Rejection decoding on llama.cpp."""

__version__ = "0.1.0"
