"""The one check every entry point makes on text before it reaches a tokenizer."""
from typing import Optional


def not_text(value: str) -> Optional[str]:
    """Why `value` cannot reach a model as text (None when it can). A lone surrogate has no
    UTF-8 form: JSON can spell one ("\\ud800"), and Python turns a non-UTF-8 byte in argv into one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid UTF-8 text (character {e.start + 1})"
    return None
