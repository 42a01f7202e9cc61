"""Typed errors. The library raises these; only the CLI turns them into one-line messages."""


class SpecRejError(Exception):
    """Base class of every error this package raises on purpose."""


class BadInput(SpecRejError, ValueError):
    """A setting or an input the user gave is out of range or malformed."""


class ClosedError(SpecRejError):
    """A SpecRej used after `close()` (or after its `with` block): its models are freed."""


class PromptTooLong(BadInput):
    """The prompt does not fit the context the settings allow."""


class ContextTooSmall(BadInput):
    """The KV budget cannot hold the prompt plus one token per sequence (or a full Best-of-N run)."""


class UnknownModelError(BadInput):
    """A model alias that is neither in the registry nor a path nor an hf: source."""


class AmbiguousModelError(BadInput):
    """A model name that fits more than one file (in Ollama's store or LM Studio's folder)."""


class ModelFileError(SpecRejError):
    """A model file is missing, not GGUF, truncated, or cannot be loaded by llama.cpp."""


class ChecksumMismatch(ModelFileError):
    """A downloaded file's sha256 differs from the registry's; the file has been deleted."""


class DownloadError(SpecRejError):
    """A model could not be fetched from its source."""


class CacheDirError(SpecRejError):
    """The cache directory cannot be created or written."""


class Cancelled(SpecRejError):
    """The caller's `should_stop` asked a run to end while llama.cpp was being fed (the decoder
    turns it into `decoder.Interrupted`, with the result as it stood)."""


class ResourceError(SpecRejError):
    """llama.cpp could not allocate a context (KV budget or GPU offload too large)."""


class RewardError(SpecRejError):
    """A reward model failed on a candidate (raised, returned NaN, or has no score head)."""


class TemplateError(SpecRejError):
    """A chat template could not be rendered."""


class OutputFileError(SpecRejError):
    """An output cannot be written where asked: the path is a folder, a device, a FIFO, a symlink
    or one of the inputs, or the disk refused the write. Nothing was written there."""
