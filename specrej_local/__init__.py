"""specrej-local: Best-of-N and Speculative Rejection decoding on llama.cpp.

The public names are imported on first use (PEP 562), so that `import specrej_local` and the
command's start-up stay light, and a Ctrl-C during start-up reaches the command's own handler.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "api": ("generate", "SpecRej", "batched_reward"),
    "decoder": ("Result", "Candidate", "RoundEvent", "Interrupted"),
    "progress": ("Progress",),
    "errors": ("SpecRejError", "ClosedError", "BadInput", "PromptTooLong", "ContextTooSmall", "UnknownModelError",
               "AmbiguousModelError", "ModelFileError", "ChecksumMismatch", "DownloadError", "CacheDirError", "ResourceError",
               "RewardError", "TemplateError"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
