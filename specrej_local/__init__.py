"""specrej-local: Best-of-N and Speculative Rejection decoding on llama.cpp."""

__version__ = "0.1.0"

from .api import SpecRej, batched_reward, generate  # noqa: E402
from .decoder import Candidate, Interrupted, Result, RoundEvent  # noqa: E402
from .errors import (  # noqa: E402
    BadInput, CacheDirError, ChecksumMismatch, ContextTooSmall, DownloadError, ModelFileError,
    PromptTooLong, ResourceError, RewardError, SpecRejError, TemplateError, UnknownModelError,
)

__all__ = [
    "generate", "SpecRej", "batched_reward", "Result", "Candidate", "RoundEvent", "Interrupted",
    "SpecRejError", "BadInput", "PromptTooLong", "ContextTooSmall", "UnknownModelError", "ModelFileError",
    "ChecksumMismatch", "DownloadError", "CacheDirError", "ResourceError", "RewardError", "TemplateError",
]
