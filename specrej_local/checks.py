"""Type checks of the settings a caller gives: one-line BadInput errors naming the setting.

The CLI and the server parse their numbers themselves; the Python API takes whatever it is
given, so `n="4"` or `kv_budget=100.5` must be refused here, not reach ctypes or be read as
something else. Names are the CLI's (`max-tokens`, `top-k`), as in every other setting error.
"""
import math
import numbers

from .errors import BadInput

SEED_RANGE = 2**32  # llama.cpp's samplers take a 32-bit seed: 0 and 2**32 would be the same stream


def _show(value, width: int = 40) -> str:
    """A value as an error message shows it: its repr cut to `width` characters (an integer too
    long for Python to print, as its size)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 10000:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103)} digits"
    return f"{value!r:.{width}}"


shown = _show  # for the modules beside this one


def whole(name: str, value) -> int:
    """An integer (numpy's too), never a bool, a float or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BadInput(f"{name} must be a whole number, got {_show(value)}")
    return int(value)


def real(name: str, value) -> float:
    """A finite number, never a bool or a string (a 400-digit integer would overflow a C float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadInput(f"{name} must be a finite number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise BadInput(f"{name} must be a finite number, got {str(value)[:40]}") from None
    if not math.isfinite(number):
        raise BadInput(f"{name} must be a finite number, got {number}")
    return number


def seed(value) -> int:
    """A seed llama.cpp can take as it is: from 0 to 2**32 - 1."""
    value = whole("seed", value)
    if not 0 <= value < SEED_RANGE:
        raise BadInput(f"seed must be between 0 and {SEED_RANGE - 1}, got {value}")
    return value


def text_or_none(name: str, value):
    if value is not None and not isinstance(value, str):
        raise BadInput(f"{name} must be a string, got {_show(value)}")
    return value


def strings(name: str, value) -> tuple:
    """Stop strings: one string, or a list or tuple of strings."""
    value = (value,) if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise BadInput(f"{name} must be a string or a list of strings, got {_show(value)}")
    if "" in value:  # it would match before the first token; ignoring it would hide the mistake
        raise BadInput(f"{name} has an empty string: a stop string needs at least one character")
    return tuple(value)
