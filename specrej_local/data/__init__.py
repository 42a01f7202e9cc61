"""Files shipped inside the package, found through importlib.resources so that they are there in
a normal (non-editable) install as well as in the source tree.

    models.txt             the model registry (the repository's top-level models.txt links here)
    alpaca_farm_100.json   the 100 AlpacaFarm-Eval prompts of the Speculative Rejection paper,
                           bench's default prompt set (CC BY-NC 4.0: ALPACA_FARM_NOTICE.md)
"""
from importlib.resources import files
from pathlib import Path


def data_file(name: str) -> Path:
    """Path of the shipped file `name`. The package is always installed as plain files (llama.cpp's
    shared library rules out zip imports), so the resource is an ordinary path."""
    return Path(str(files(__name__) / name))


MODELS_TXT = data_file("models.txt")
ALPACA_FARM_100 = data_file("alpaca_farm_100.json")
