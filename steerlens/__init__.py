"""steerlens: look inside a transformer and change what it does (transformer-lens 4.x)."""

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = ["Activations", "capture", "data", "fingerprint", "load_model", "tiny_model", "token_span"]
__version__ = "0.1.0"

_LAZY = {
    "Activations": "steerlens.activations",
    "capture": "steerlens.capturing",
    "fingerprint": "steerlens.models",
    "load_model": "steerlens.models",
    "tiny_model": "steerlens.tiny",
    "token_span": "steerlens.tokens",
}

if TYPE_CHECKING:
    from steerlens import data
    from steerlens.activations import Activations
    from steerlens.capturing import capture
    from steerlens.models import fingerprint, load_model
    from steerlens.tiny import tiny_model
    from steerlens.tokens import token_span


def __getattr__(name: str):
    # Lazy: `import steerlens` (and the CLI's --help) stays fast; torch loads on first use.
    if name == "data":
        return import_module("steerlens.data")
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerlens' has no attribute {name!r}")
