"""GGUF files other tools already keep on this machine: Ollama's store, LM Studio's models folder and
the Hugging Face cache. Found where they lie and used in place: nothing is copied or hashed.

    ollama:[host/][namespace/]model[:tag]   Ollama's manifests name the model's GGUF blob
    lmstudio:publisher/repo[/file.gguf]     a file in LM Studio's models folder
    hf:owner/repo/file.gguf                 (registry.py) looked up in the Hugging Face cache first

Ollama keeps `<store>/manifests/<host>/<namespace>/<model>/<tag>` (releases from 0.40 on write
`manifests-v2/`, with the public registry's host spelled `ollama.com`, and look there first), each a
JSON manifest whose layer of media type `application/vnd.ollama.image.model` names the weights'
blob by digest `sha256:<hex>`, stored as `<store>/blobs/sha256-<hex>`. The store is `$OLLAMA_MODELS`,
else `~/.ollama/models` and, for Linux system installs, `/usr/share/ollama/.ollama/models`.
LM Studio keeps `<folder>/<publisher>/<repo>/<file>.gguf` under `$SPECREJ_LMSTUDIO_MODELS`, else
`~/.lmstudio/models` (older releases: `~/.cache/lm-studio/models`).

A name that is not there, a blob that is not GGUF, or a name that fits two different files is a
one-line typed error (ModelFileError, AmbiguousModelError), never a guess.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import AmbiguousModelError, BadInput, ModelFileError
from ..files import open_regular, read_regular_text

GGUF_MAGIC = b"GGUF"
MODEL_LAYER = "application/vnd.ollama.image.model"
MANIFEST_LIST = "application/vnd.ollama.manifest.list.v2+json"
PUBLIC_HOSTS = ("registry.ollama.ai", "ollama.com")  # one registry, two spellings (old, new)
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
SYSTEM_OLLAMA_STORE = "/usr/share/ollama/.ollama/models"  # the Linux installer's `ollama` user
LMSTUDIO_ENV = "SPECREJ_LMSTUDIO_MODELS"

_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAME = (r"(?!.*\.\.)(?:(?:(?P<host>[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[0-9]+)?)/)?"
         r"(?P<namespace>[A-Za-z0-9_][A-Za-z0-9_-]{0,79})/)?"
         rf"(?P<model>{_PART})(?::(?P<tag>{_PART}))?")
_SEGMENT = r"(?!\.\.?(?:/|$))[^/\s\\]+"  # never '.' or '..'
OLLAMA_SOURCE = re.compile(rf"ollama:{_NAME}")
LMSTUDIO_SOURCE = re.compile(rf"lmstudio:(?P<repo>{_SEGMENT}/{_SEGMENT})(?:/(?P<file>(?:{_SEGMENT}/)*{_SEGMENT}))?")
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


@dataclass(frozen=True)
class Found:
    """One model file found in another tool's store: `name` is what -g/-r accept for it."""

    source: str  # "ollama", "lmstudio" or "hf-cache"
    name: str
    path: Path
    size: int


def _first_bytes(path: Path, n: int = 4) -> bytes:
    """The first bytes of a regular file (a FIFO, a device or a folder: OSError, see open_regular)."""
    with open_regular(path) as f:
        return f.read(n)


def is_gguf(path: Path) -> bool:
    """True when the file is a regular file that starts with GGUF's magic bytes (4 bytes read)."""
    try:
        return _first_bytes(path) == GGUF_MAGIC
    except OSError:
        return False


# --- Ollama -----------------------------------------------------------------------------------


def ollama_stores() -> list:
    """The Ollama stores to read: `$OLLAMA_MODELS` alone when set, else the per-user and the
    system-install stores that exist."""
    setting = os.environ.get("OLLAMA_MODELS", "").strip().strip("\"'")
    if setting:
        return [Path(setting).expanduser()]
    return [p for p in (Path("~/.ollama/models").expanduser(), Path(SYSTEM_OLLAMA_STORE)) if p.is_dir()]


def ollama_name(source: str) -> tuple:
    """(host, namespace, model, tag) of an `ollama:` source, defaults filled in as Ollama does."""
    m = OLLAMA_SOURCE.fullmatch(source)
    if not m:
        raise BadInput(f"malformed ollama: source {source!r} (expected ollama:[host/][namespace/]model[:tag])")
    return (m["host"] or DEFAULT_HOST, m["namespace"] or DEFAULT_NAMESPACE, m["model"], m["tag"] or DEFAULT_TAG)


def short_ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The shortest name that means this model, as `ollama list` shows it."""
    if host.lower() in PUBLIC_HOSTS:
        return f"{model}:{tag}" if namespace == DEFAULT_NAMESPACE else f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def _manifest_paths(store: Path, host: str, namespace: str, model: str, tag: str) -> list:
    """Where a name's manifest may lie, in the order Ollama looks: manifests-v2 first."""
    parts = (namespace, model, tag)
    if host.lower() not in PUBLIC_HOSTS:
        return [store / "manifests-v2" / host / Path(*parts), store / "manifests" / host / Path(*parts)]
    return [store / "manifests-v2" / "ollama.com" / Path(*parts)] + \
        [store / "manifests" / h / Path(*parts) for h in PUBLIC_HOSTS]


def _find_ignoring_case(path: Path, store: Path) -> list:
    """`path` if it exists, else every path under `store` that spells it with other letter case
    (Ollama compares names without case; a case-sensitive file system does not)."""
    if path.is_file():
        return [path]
    found = [store]
    for part in path.relative_to(store).parts:
        found = [child for folder in found if folder.is_dir() for child in folder.iterdir()
                 if child.name.lower() == part.lower()]
    return [p for p in found if p.is_file()]


MAX_MANIFEST_BYTES = 1 << 20  # a manifest names a few blobs: a few kB


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(read_regular_text(path, what, MAX_MANIFEST_BYTES))
    except BadInput as exc:  # not a regular file, too large, not UTF-8
        raise ModelFileError(str(exc)) from None
    except RecursionError:
        raise ModelFileError(f"cannot read {what} {path}: it is nested too deeply to be a manifest") from None
    except ValueError as exc:
        raise ModelFileError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{what} {path} is not a JSON object")
    return data


def _blob(store: Path, digest) -> Path:
    """The blob file a digest names; the digest is checked first, so it can never name a path
    outside the store."""
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise ModelFileError(f"Ollama store {store} holds a manifest with a malformed digest {digest!r:.80}")
    return store / "blobs" / f"sha256-{m[1].lower()}"


def _model_layer(store: Path, manifest: dict, where: Path) -> dict:
    """The model layer of a manifest; for a manifest list (one child per runner), that of the
    child whose weights are GGUF."""
    if manifest.get("mediaType") != MANIFEST_LIST:
        layers = [layer for layer in manifest.get("layers") or () if isinstance(layer, dict)
                  and layer.get("mediaType") == MODEL_LAYER]
        if not layers:
            raise ModelFileError(f"the Ollama manifest {where} names no model layer")
        return layers[0]
    formats = []
    for child in manifest.get("manifests") or ():
        if not isinstance(child, dict):
            continue
        formats.append(child.get("format") or child.get("runner") or "?")
        try:
            if not child.get("layers") and child.get("digest"):  # a reference to a manifest blob
                child = {**_read_json(_blob(store, child["digest"]), "Ollama manifest"), **child}
            layer = _model_layer(store, {**child, "mediaType": None}, where)
            if is_gguf(_blob(store, layer.get("digest"))):
                return layer
        except ModelFileError:  # this runner's child is unusable here; another may serve
            continue
    raise ModelFileError(f"the Ollama manifest {where} lists no GGUF model (formats: {', '.join(formats) or 'none'})")


def ollama_blob(source: str) -> Path:
    """The GGUF blob an `ollama:` source names, in the first store that has it."""
    host, namespace, model, tag = ollama_name(source)
    stores = ollama_stores()
    found = {}  # blob's file name (its digest) -> (blob, manifest naming it), for each store that has the name
    for store in stores:
        for candidate in _manifest_paths(store, host, namespace, model, tag):
            try:
                manifests = _find_ignoring_case(candidate, store)
            except OSError as exc:
                raise ModelFileError(f"cannot read the Ollama store {store}: {exc.strerror or exc}") from None
            if len(manifests) > 1:
                raise AmbiguousModelError(f"{source} is ambiguous: Ollama store {store} holds "
                                          f"{', '.join(str(p) for p in manifests)}; give the name as spelled there")
            if manifests:
                manifest = manifests[0]
                layer = _model_layer(store, _read_json(manifest, "Ollama manifest"), manifest)
                blob = _blob(store, layer.get("digest"))
                found.setdefault(blob.name, (blob, manifest))
                break  # manifests-v2 wins over the older copy, as in Ollama
    if not found:
        where = " or ".join(str(s) for s in stores) or \
            f"~/.ollama/models or {SYSTEM_OLLAMA_STORE} (neither exists; set OLLAMA_MODELS)"
        raise ModelFileError(f"{source}: no such model in the Ollama store {where}; "
                             f"`ollama pull {short_ollama_name(host, namespace, model, tag)}` fetches it")
    if len(found) > 1:  # the same digest in two stores is one model; two digests are two
        raise AmbiguousModelError(f"{source} is ambiguous: " + ", ".join(str(m) for _, m in found.values()) +
                                  " name different models; set OLLAMA_MODELS to the store to use")
    blob, manifest = next(iter(found.values()))
    return _check_blob(blob, f"{source} (manifest {manifest})")


def _check_blob(path: Path, what: str) -> Path:
    """`path` when it is a readable file that starts like a GGUF file; else a one-line reason."""
    try:
        magic = _first_bytes(path)
    except FileNotFoundError:
        raise ModelFileError(f"{what} names the file {path}, which is missing; fetch the model again") from None
    except OSError as exc:
        raise ModelFileError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{what}: {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    return path


def _same_file_key(path: Path):
    try:
        st = path.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return str(path)


def list_ollama() -> list:
    """Every model in the Ollama stores whose weights are a GGUF blob that is present."""
    rows, seen = [], set()
    for store in ollama_stores():
        for root in ("manifests-v2", "manifests"):
            for manifest in sorted((store / root).glob("*/*/*/*")):
                host, namespace, model, tag = manifest.relative_to(store / root).parts
                name = "ollama:" + short_ollama_name(host, namespace, model, tag)
                if name.lower() in seen or not manifest.is_file() or tag.startswith("."):
                    continue
                try:
                    layer = _model_layer(store, _read_json(manifest, "Ollama manifest"), manifest)
                    blob = _check_blob(_blob(store, layer.get("digest")), name)
                    rows.append(Found("ollama", name, blob, blob.stat().st_size))
                except (ModelFileError, OSError):
                    continue
                seen.add(name.lower())
    return rows


# --- LM Studio --------------------------------------------------------------------------------


def lmstudio_folders() -> list:
    """`$SPECREJ_LMSTUDIO_MODELS` alone when set, else LM Studio's default folders that exist."""
    setting = os.environ.get(LMSTUDIO_ENV, "").strip()
    if setting:
        return [Path(setting).expanduser()]
    return [p for p in (Path("~/.lmstudio/models").expanduser(), Path("~/.cache/lm-studio/models").expanduser())
            if p.is_dir()]


def _is_projector(path: Path) -> bool:
    """A vision projector (mmproj) file sits beside the model it serves; it is no language model."""
    from .gguf_file import read_header

    try:
        return read_header(path, {"general.architecture"}).values.get("general.architecture") == "clip"
    except ModelFileError:
        return False


_SPLIT_PART = re.compile(r".*-(\d{5})-of-\d{5}\.gguf", re.IGNORECASE)


def _models_in(repo_folder: Path) -> list:
    """The language-model GGUF files of one LM Studio repo folder: projectors and the second and
    later parts of a split model left out (llama.cpp opens a split model by its first part)."""
    files = sorted(p for p in repo_folder.rglob("*") if p.suffix.lower() == ".gguf" and p.is_file())
    keep = []
    for path in files:
        split = _SPLIT_PART.fullmatch(path.name)
        if split and split[1] != "00001":
            continue
        if not _is_projector(path):
            keep.append(path)
    return keep


def lmstudio_file(source: str) -> Path:
    """The GGUF file an `lmstudio:` source names; without a file name, the repo folder's only model."""
    m = LMSTUDIO_SOURCE.fullmatch(source)
    if not m:
        raise BadInput(f"malformed lmstudio: source {source!r} (expected lmstudio:publisher/repo[/file.gguf])")
    folders = lmstudio_folders()
    if not folders:
        raise ModelFileError(f"{source}: no LM Studio models folder (~/.lmstudio/models, ~/.cache/lm-studio/models); "
                             f"set {LMSTUDIO_ENV} to the folder LM Studio uses")
    found = []
    for folder in folders:
        repo = folder / m["repo"]
        if m["file"]:
            named = repo / m["file"]
            if os.path.lexists(named) and not named.is_file():
                raise ModelFileError(f"{source}: {named} is not a regular file")
            found += [named] if named.is_file() else []
        elif repo.is_dir():
            found += _models_in(repo)
    distinct = {_same_file_key(p): p for p in found}
    if not distinct:
        raise ModelFileError(f"{source}: no such model in {' or '.join(str(f) for f in folders)}")
    if len(distinct) > 1:
        names = ", ".join(lmstudio_name(p) for p in distinct.values())
        raise AmbiguousModelError(f"{source} is ambiguous: it fits {names}; name the file")
    return _check_blob(next(iter(distinct.values())), source)


def lmstudio_name(path: Path) -> str:
    """The `lmstudio:` name of a file under one of the models folders."""
    for folder in lmstudio_folders():
        try:
            return "lmstudio:" + path.relative_to(folder).as_posix()
        except ValueError:
            continue
    return str(path)


def list_lmstudio() -> list:
    rows = []
    for folder in lmstudio_folders():
        for repo in sorted(p for p in folder.glob("*/*") if p.is_dir()):
            for path in _models_in(repo):
                if is_gguf(path):
                    rows.append(Found("lmstudio", "lmstudio:" + path.relative_to(folder).as_posix(), path,
                                      path.stat().st_size))
    return rows


# --- the Hugging Face cache --------------------------------------------------------------------


def list_hf_cache() -> list:
    """GGUF files in the Hugging Face cache at the revision `main` points to, which is where an
    `hf:owner/repo/file` source finds them (huggingface_hub's own scan: file sizes, no hashing)."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)  # the folder try_to_load_from_cache reads
    except (CacheNotFound, OSError, ValueError):
        return []
    rows = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            if "main" not in revision.refs:
                continue
            for f in sorted(revision.files, key=lambda f: f.file_name):
                rel = f.file_path.relative_to(revision.snapshot_path).as_posix()
                if rel.lower().endswith(".gguf") and is_gguf(f.file_path):
                    rows.append(Found("hf-cache", f"hf:{repo.repo_id}/{rel}", f.file_path, f.size_on_disk))
    return rows


def list_all() -> list:
    """Everything found in the three stores, Ollama first."""
    return list_ollama() + list_lmstudio() + list_hf_cache()
