"""The Unicode normaliser a Hugging Face tokenizer applies before tokenizing, kept in the GGUF.

llama.cpp does not apply a tokenizer.json `normalizer` (Qwen's is NFC), so decomposed text
(`e` + U+0301) would get other token ids than the model was trained on. `convert-reward` stores the
normaliser as metadata and `Model.tokenize` applies it with `unicodedata`:

    specrej.tokenizer.normalizer   "NFC" (several forms: comma-separated, applied in order)
"""
import unicodedata

from ..errors import BadInput

NORMALIZER_KEY = "specrej.tokenizer.normalizer"
FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def forms_of(normalizer, where) -> list:
    """The Unicode forms a tokenizer.json `normalizer` entry applies, in order; BadInput for any
    other kind of normaliser (lowercasing, replacing, ...), which would be silently lost."""
    if not normalizer:
        return []
    if not isinstance(normalizer, dict):
        raise BadInput(f"{where}: the tokenizer's normalizer must be a JSON object, not a {type(normalizer).__name__}")
    kind = normalizer.get("type")
    if kind == "Sequence":
        steps = normalizer.get("normalizers") or []
        if not isinstance(steps, list):
            raise BadInput(f"{where}: the tokenizer's normalizers must be a JSON list")
        return [f for step in steps for f in forms_of(step, where)]
    if kind in FORMS:
        return [kind]
    raise BadInput(f"{where}: the tokenizer's normalizer {str(kind)[:40]!r} cannot be carried into the file; "
                   f"supported: {', '.join(FORMS)}")


def parse(value) -> tuple:
    """The forms stored under NORMALIZER_KEY (None or "" -> none)."""
    return tuple(f for f in (value or "").split(",") if f in FORMS)


def normalize(text: str, forms) -> str:
    for form in forms:
        text = unicodedata.normalize(form, text)
    return text
