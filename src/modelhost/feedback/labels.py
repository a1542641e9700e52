"""What a user may send as a label: validated text, and (unless allowed) one of the model's."""

from __future__ import annotations

import unicodedata

from ..errors import InvalidInput
from .schema import LABEL_MAX

# Control characters, line/paragraph separators and surrogates (a lone one cannot be stored
# as UTF-8), plus the bidirectional overrides used to disguise text.
_REFUSED_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_label(text: str) -> str:
    """The label, trimmed; InvalidInput if it is empty, too long or holds control text."""
    label = text.strip()
    if not label:
        raise InvalidInput("label must not be empty")
    if len(label) > LABEL_MAX:
        raise InvalidInput(f"label must be at most {LABEL_MAX} characters")
    for char in label:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char in _BIDI_CONTROLS:
            raise InvalidInput(f"label must not contain the character U+{ord(char):04X}")
    return label


def check_known(label: str, known: tuple[str, ...] | frozenset[str], model: str) -> None:
    if label not in known:
        raise InvalidInput(f"{label!r} is not a label of model {model!r}",
                           "unknown_label")
