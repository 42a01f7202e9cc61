"""Models other tools keep: Ollama's store, LM Studio's folder, the Hugging Face cache.

Each store is built in tmp_path exactly as its tool lays it out (no Ollama or LM Studio install,
no network), with real GGUF files: the small `tiny_gguf`, and for real runs a random-weight model
of the `tiny` layout that llama.cpp loads and decodes.
"""
import hashlib
import json
import os
from pathlib import Path

import pytest

from specrej_local.errors import AmbiguousModelError, BadInput, ModelFileError
from specrej_local.models import registry, stores
from specrej_local.models.random_model import write_random_gguf
from test_registry import assert_one_line_error, fake_hub, leftover_files, run_cli, run_cli_process  # noqa: F401 (fixture)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def put_blob(store: Path, data: bytes) -> dict:
    """Store `data` as Ollama does (blobs/sha256-<hex>); returns its descriptor's digest and size."""
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def ollama_manifest(store: Path, weights: bytes, family: str = "llama") -> dict:
    """The manifest `ollama pull` writes for a GGUF model: a config blob, then the weights, the
    chat template and the parameters as layers, every one a blob named by its sha256."""
    model = put_blob(store, weights)
    config = put_blob(store, json.dumps({"model_format": "gguf", "model_family": family, "file_type": "Q8_0",
                                         "rootfs": {"type": "layers", "diff_ids": [model["digest"]]}}).encode())
    return {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.ollama.image.model", **model},
                       {"mediaType": "application/vnd.ollama.image.template", **put_blob(store, b"{{ .Prompt }}")},
                       {"mediaType": "application/vnd.ollama.image.params", **put_blob(store, b'{"stop":["<|im_end|>"]}')}]}


def add_ollama_model(store: Path, weights: bytes, model: str, tag: str = "latest", namespace: str = "library",
                     host: str = "registry.ollama.ai", v2: bool = False, manifest: dict = None) -> Path:
    """One pulled model: its manifest at manifests/<host>/<namespace>/<model>/<tag> (Ollama before
    0.40), or (v2) at manifests-v2/<host>/... as a link to the manifest's own blob (0.40 on, where
    the public registry's host is spelled ollama.com). Returns the weights' blob."""
    manifest = manifest or ollama_manifest(store, weights)
    text = json.dumps(manifest).encode()
    if v2:
        path = store / "manifests-v2" / ("ollama.com" if host == "registry.ollama.ai" else host) / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = put_blob(store, text)["digest"].replace(":", "-")
        path.symlink_to(os.path.relpath(store / "blobs" / blob, path.parent))
    else:
        path = store / "manifests" / host / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    return store / "blobs" / f"sha256-{hashlib.sha256(weights).hexdigest()}"


@pytest.fixture
def ollama(tmp_path) -> Path:
    """The Ollama store this test builds (conftest points OLLAMA_MODELS at it)."""
    return tmp_path / "ollama"


@pytest.fixture
def lmstudio(tmp_path) -> Path:
    """The LM Studio folder this test builds (conftest points SPECREJ_LMSTUDIO_MODELS at it)."""
    return tmp_path / "lmstudio"


@pytest.fixture(scope="session")
def random_tiny(tmp_path_factory, default_model) -> bytes:
    """A real model (random weights, the `tiny` layout, SmolLM2's tokenizer and chat template)."""
    path = write_random_gguf(tmp_path_factory.mktemp("random") / "tiny.gguf", default_model, "tiny", "q8_0")
    return path.read_bytes()


# --- ollama: ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ollama:tiny", "ollama:tiny:latest", "ollama:library/tiny",
                                  "ollama:registry.ollama.ai/library/tiny:latest", "ollama:TINY:Latest"])
def test_an_ollama_name_resolves_to_its_blob_in_place(ollama, tiny_gguf, isolated_cache, name):
    blob = add_ollama_model(ollama, tiny_gguf.read_bytes(), "tiny")
    path = registry.resolve(name)
    assert path == blob and path.read_bytes() == tiny_gguf.read_bytes()
    assert leftover_files(isolated_cache) == []  # used where it lies: nothing copied into our cache
    result = run_cli("models", "path", name)
    assert result.exit_code == 0 and result.stdout == f"{blob}\n" and result.stderr == ""


def test_ollama_namespaces_hosts_tags_and_the_v2_layout(ollama, tiny_gguf, random_tiny):
    data = tiny_gguf.read_bytes()
    variants = {name: data + bytes([i]) * 64 for i, name in enumerate(
        ["ollama:tiny:q4", "ollama:someone/tiny:q8", "ollama:example.com:5000/team/tiny:v1", "ollama:new:latest"])}
    blobs = {"ollama:tiny:q4": add_ollama_model(ollama, variants["ollama:tiny:q4"], "tiny", "q4"),
             "ollama:someone/tiny:q8": add_ollama_model(ollama, variants["ollama:someone/tiny:q8"], "tiny", "q8",
                                                        namespace="someone"),
             "ollama:example.com:5000/team/tiny:v1": add_ollama_model(
                 ollama, variants["ollama:example.com:5000/team/tiny:v1"], "tiny", "v1", namespace="team",
                 host="example.com:5000"),
             "ollama:new:latest": add_ollama_model(ollama, variants["ollama:new:latest"], "new", v2=True)}
    for name, blob in blobs.items():
        assert registry.resolve(name) == blob, name
    # a model that is in both layouts (Ollama 0.40 keeps the old manifest as a fallback): v2 wins
    old = add_ollama_model(ollama, random_tiny, "both")
    new = add_ollama_model(ollama, data, "both", v2=True)
    assert old != new and registry.resolve("ollama:both") == new


def test_an_ollama_manifest_list_uses_its_gguf_child(ollama, tiny_gguf):
    """Ollama 0.40 may keep one child manifest per runner; MLX's weights are safetensors."""
    mlx = ollama_manifest(ollama, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    gguf_child = ollama_manifest(ollama, tiny_gguf.read_bytes())
    reference = put_blob(ollama, json.dumps(gguf_child).encode())
    listing = {"schemaVersion": 2, "mediaType": stores.MANIFEST_LIST,
               "manifests": [{**mlx, "runner": "mlx", "format": "safetensors"},
                             {"mediaType": DOCKER_MANIFEST, "runner": "llamacpp", "format": "gguf", **reference}]}
    blob = add_ollama_model(ollama, tiny_gguf.read_bytes(), "multi", manifest=listing, v2=True)
    assert registry.resolve("ollama:multi") == blob

    only_mlx = {**listing, "manifests": listing["manifests"][:1]}
    add_ollama_model(ollama, b"", "mlxonly", manifest=only_mlx, v2=True)
    with pytest.raises(ModelFileError, match="lists no GGUF model .formats: safetensors"):
        registry.resolve("ollama:mlxonly")


def test_a_missing_ollama_model_is_one_line_and_exit_2(ollama, tiny_gguf):
    add_ollama_model(ollama, tiny_gguf.read_bytes(), "tiny")
    with pytest.raises(ModelFileError, match="no such model in the Ollama store"):
        registry.resolve("ollama:tiny:7b")
    assert_one_line_error(run_cli("models", "path", "ollama:tiny:7b"), "no such model in the Ollama store",
                          str(ollama), "`ollama pull tiny:7b`")
    assert_one_line_error(run_cli("-g", "ollama:someone/absent", "-q", "hi"), "`ollama pull someone/absent:latest`")


def test_an_ollama_blob_that_is_not_gguf_or_missing_is_one_line(ollama, tiny_gguf):
    blob = add_ollama_model(ollama, b"PK\x03\x04 a zip, not weights", "zipped")
    assert_one_line_error(run_cli("models", "path", "ollama:zipped"), f"{blob} is not a GGUF file")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        registry.resolve("ollama:zipped")

    gone = add_ollama_model(ollama, tiny_gguf.read_bytes(), "gone")
    gone.unlink()
    assert_one_line_error(run_cli("models", "path", "ollama:gone"), f"names the file {gone}, which is missing")

    bad = ollama_manifest(ollama, tiny_gguf.read_bytes())
    bad["layers"][0]["digest"] = "sha256:../../../etc/passwd"  # a digest can never name a path elsewhere
    add_ollama_model(ollama, b"", "evil", manifest=bad)
    assert_one_line_error(run_cli("models", "path", "ollama:evil"), "malformed digest")

    (ollama / "manifests" / "registry.ollama.ai" / "library" / "broken").mkdir(parents=True)
    (ollama / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest").write_text("{not json")
    assert_one_line_error(run_cli("models", "path", "ollama:broken"), "cannot read Ollama manifest")


def test_a_damaged_store_never_hangs_or_tracebacks_and_models_lists_the_rest(ollama, lmstudio, tiny_gguf):
    good = add_ollama_model(ollama, tiny_gguf.read_bytes(), "good")
    deep = ollama / "manifests" / "registry.ollama.ai" / "library" / "deep"
    deep.mkdir(parents=True)
    (deep / "latest").write_text("[" * 100000 + "]" * 100000)  # json.loads: RecursionError
    assert_one_line_error(run_cli("models", "path", "ollama:deep"), "nested too deeply")
    fifo_manifest = ollama_manifest(ollama, b"")
    fifo_digest = "d" * 64
    fifo_manifest["layers"][0]["digest"] = f"sha256:{fifo_digest}"
    add_ollama_model(ollama, b"", "piped", manifest=fifo_manifest)
    os.mkfifo(ollama / "blobs" / f"sha256-{fifo_digest}")  # reading it would wait for a writer forever
    assert_one_line_error(run_cli("models", "path", "ollama:piped"), "not a regular file")
    named_fifo = ollama / "manifests" / "registry.ollama.ai" / "library" / "fifo-manifest"
    named_fifo.mkdir(parents=True)
    os.mkfifo(named_fifo / "latest")
    listed = run_cli("models")
    assert listed.exit_code == 0, listed.output
    assert "ollama:good" in listed.stdout and str(good) in listed.stdout
    assert "deep" not in listed.stdout and "piped" not in listed.stdout

    add_lmstudio_file(lmstudio, "acme/repo/real.gguf", tiny_gguf.read_bytes())
    os.mkfifo(lmstudio / "acme" / "repo" / "b.gguf")
    assert_one_line_error(run_cli("models", "path", "lmstudio:acme/repo/b.gguf"), "is not a regular file")
    assert run_cli("models", "path", "lmstudio:acme/repo").stdout.strip() == str(lmstudio / "acme/repo/real.gguf")


def test_a_fifo_named_as_a_model_says_what_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkfifo("fifo1")
    with pytest.raises(ModelFileError, match="fifo1 is not a regular file"):
        registry.resolve("fifo1")
    assert_one_line_error(run_cli("-g", "fifo1", "-q", "hi"), "fifo1 is not a regular file")


def test_an_ollama_name_that_fits_two_manifests_is_ambiguous(ollama, tiny_gguf, random_tiny):
    """Ollama compares names without case; a case-sensitive disk can hold both spellings."""
    add_ollama_model(ollama, tiny_gguf.read_bytes(), "Mixed")
    add_ollama_model(ollama, random_tiny, "mixed")
    assert registry.resolve("ollama:mixed") != registry.resolve("ollama:Mixed")  # as spelled: no doubt
    with pytest.raises(AmbiguousModelError):
        registry.resolve("ollama:MIXED")
    assert_one_line_error(run_cli("models", "path", "ollama:MIXED"), "ollama:MIXED is ambiguous", "Mixed", "mixed")


@pytest.mark.parametrize("name", ["ollama:", "ollama:../x", "ollama:a/b/c/d", "ollama:x::y", "ollama:x:",
                                  "ollama:bad.ns/x", "ollama:x+Q4_0"])
def test_a_malformed_ollama_name_is_one_line(name):
    with pytest.raises(BadInput, match="malformed ollama: source"):
        registry.resolve(name)
    assert_one_line_error(run_cli("models", "path", name), "malformed ollama: source",
                          "ollama:[host/][namespace/]model[:tag]")


def test_run_generates_with_an_ollama_model_as_generator_and_judge(ollama, random_tiny, isolated_cache):
    add_ollama_model(ollama, random_tiny, "tiny-random", "q8")
    result = run_cli("-g", "ollama:tiny-random:q8", "-r", "judge:ollama:tiny-random:q8", "-n", "2",
                     "--max-tokens", "4", "--temperature", "0", "--json", "-q", "-t", "1", "Hello")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["generator"] == "ollama:tiny-random:q8" and len(record["candidates"]) == 2
    assert all(c["tokens"] for c in record["candidates"]) and "Fetching" not in result.stderr
    assert leftover_files(isolated_cache) == []
    # as a reward model it is found too, and refused for what it is (no score head), in one line
    assert_one_line_error(run_cli("-g", "ollama:tiny-random:q8", "-r", "ollama:tiny-random:q8", "-q", "Hi"),
                          "has no score head")


# --- lmstudio: --------------------------------------------------------------------------------


def add_lmstudio_file(folder: Path, rel: str, data: bytes) -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def projector(tmp_path) -> bytes:
    """A vision projector's GGUF (architecture clip), as LM Studio keeps beside a vision model."""
    import gguf
    import numpy as np

    path = tmp_path / "mmproj.gguf"
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_tensor("v.weight", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_an_lmstudio_repo_or_file_resolves_in_place(lmstudio, tiny_gguf, projector, isolated_cache):
    model = add_lmstudio_file(lmstudio, "acme/Tiny-GGUF/tiny-Q8_0.gguf", tiny_gguf.read_bytes())
    add_lmstudio_file(lmstudio, "acme/Tiny-GGUF/mmproj-tiny-f16.gguf", projector)
    assert registry.resolve("lmstudio:acme/Tiny-GGUF") == model  # the projector is no language model
    assert registry.resolve("lmstudio:acme/Tiny-GGUF/tiny-Q8_0.gguf") == model
    assert leftover_files(isolated_cache) == []

    second = add_lmstudio_file(lmstudio, "acme/Tiny-GGUF/tiny-Q4_K_M.gguf", tiny_gguf.read_bytes())
    with pytest.raises(AmbiguousModelError, match="lmstudio:acme/Tiny-GGUF/tiny-Q4_K_M.gguf, "
                                                  "lmstudio:acme/Tiny-GGUF/tiny-Q8_0.gguf; name the file"):
        registry.resolve("lmstudio:acme/Tiny-GGUF")
    assert_one_line_error(run_cli("models", "path", "lmstudio:acme/Tiny-GGUF"), "is ambiguous", "name the file")
    assert registry.resolve("lmstudio:acme/Tiny-GGUF/tiny-Q4_K_M.gguf") == second


def test_lmstudio_errors_are_one_line(lmstudio, tmp_path, monkeypatch):
    add_lmstudio_file(lmstudio, "acme/notes/readme.gguf", b"just text, named .gguf")
    assert_one_line_error(run_cli("models", "path", "lmstudio:acme/notes/readme.gguf"), "is not a GGUF file")
    assert_one_line_error(run_cli("models", "path", "lmstudio:acme/absent"), "no such model in", str(lmstudio))
    assert_one_line_error(run_cli("models", "path", "lmstudio:acme/../x"), "malformed lmstudio: source")
    monkeypatch.delenv("SPECREJ_LMSTUDIO_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    assert_one_line_error(run_cli("models", "path", "lmstudio:acme/x"), "no LM Studio models folder",
                          "SPECREJ_LMSTUDIO_MODELS")


def test_lmstudio_default_folders_are_read_without_a_setting(tmp_path, monkeypatch, tiny_gguf):
    monkeypatch.delenv("SPECREJ_LMSTUDIO_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = add_lmstudio_file(tmp_path / "home" / ".cache" / "lm-studio" / "models", "a/b/old.gguf", tiny_gguf.read_bytes())
    new = add_lmstudio_file(tmp_path / "home" / ".lmstudio" / "models", "a/c/new.gguf", tiny_gguf.read_bytes())
    assert registry.resolve("lmstudio:a/b") == old and registry.resolve("lmstudio:a/c") == new


# --- hf: and the Hugging Face cache -------------------------------------------------------------


def add_hf_cache_file(cache: Path, repo: str, rel: str, data: bytes, revision: str = "a" * 40) -> Path:
    """A file as huggingface_hub caches it: models--owner--repo/blobs/<etag>, a snapshot link to it,
    and refs/main naming the snapshot's revision."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / revision / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return link


def test_hf_source_is_taken_from_the_hf_cache_without_asking_the_hub(fake_hub, tmp_path, tiny_gguf):
    hf_cache = tmp_path / "hf-cache"
    cached = add_hf_cache_file(hf_cache, "acme/tiny-GGUF", "tiny.gguf", tiny_gguf.read_bytes())
    done = run_cli_process("models", "path", "hf:acme/tiny-GGUF/tiny.gguf", hub=fake_hub, hf_cache=hf_cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{cached}\n" and fake_hub.requests == []
    # a run loads the cached file (which is no complete model, so llama.cpp refuses it, in one line)
    done = run_cli_process("-g", "hf:acme/tiny-GGUF/tiny.gguf", "-q", "hi", hub=fake_hub, hf_cache=hf_cache)
    assert done.stderr.startswith(f"Error: llama.cpp could not load {cached} ") and done.returncode == 2
    assert "Fetching" not in done.stderr and fake_hub.requests == []


# --- models: what is found, listed cheaply ---------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """huggingface_hub's cache folder for in-process calls (its setting is read when it is imported)."""
    from huggingface_hub import constants

    path = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    return path


def test_models_lists_what_the_stores_hold_beside_the_registry(ollama, lmstudio, hf_cache, tiny_gguf, projector,
                                                               monkeypatch):
    data = tiny_gguf.read_bytes()
    ollama_blob = add_ollama_model(ollama, data, "tiny", "q8")
    add_ollama_model(ollama, b"not gguf", "zipped")  # not GGUF: not listed
    lm = add_lmstudio_file(lmstudio, "acme/Tiny-GGUF/tiny-Q8_0.gguf", data + b"\0" * 10)
    add_lmstudio_file(lmstudio, "acme/Tiny-GGUF/mmproj-tiny.gguf", projector)
    hf = add_hf_cache_file(hf_cache, "acme/tiny-GGUF", "sub/tiny.gguf", data + b"\0" * 20)
    add_hf_cache_file(hf_cache, "acme/other", "config.json", b"{}")

    def no_hashing(*args, **kwargs):
        raise AssertionError("listing must not hash model files")
    monkeypatch.setattr(registry.hashlib, "sha256", no_hashing)

    result = run_cli("models")
    assert result.exit_code == 0, result.output
    registry_part, found_part = result.stdout.split("\n\n")
    assert registry_part.splitlines()[0].split() == ["ALIAS", "ROLE", "SIZE_MB", "DOWNLOADED", "LICENSE"]
    rows = [line.split() for line in found_part.splitlines()]
    assert rows == [["SOURCE", "NAME", "SIZE_MB", "PATH"],
                    ["ollama", "ollama:tiny:q8", f"{len(data) / 1e6:.1f}", str(ollama_blob)],
                    ["lmstudio", "lmstudio:acme/Tiny-GGUF/tiny-Q8_0.gguf", f"{(len(data) + 10) / 1e6:.1f}", str(lm)],
                    ["hf-cache", "hf:acme/tiny-GGUF/sub/tiny.gguf", f"{(len(data) + 20) / 1e6:.1f}", str(hf)]]
    for _source, name, _size, path in rows[1:]:  # every NAME listed resolves to the PATH listed
        assert str(registry.resolve(name)) == path


def test_models_lists_only_the_registry_when_no_store_holds_anything(hf_cache):
    result = run_cli("models")
    assert result.exit_code == 0 and "\n\n" not in result.stdout
    assert len(result.stdout.splitlines()) == 1 + len(registry.load_registry())


def test_the_default_ollama_store_is_read_without_a_setting(tmp_path, monkeypatch, tiny_gguf):
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if Path(stores.SYSTEM_OLLAMA_STORE).is_dir():
        pytest.skip("this machine has a system-wide Ollama store, which would be read as well")
    assert_one_line_error(run_cli("models", "path", "ollama:tiny"), "~/.ollama/models",
                          stores.SYSTEM_OLLAMA_STORE, "set OLLAMA_MODELS")
    blob = add_ollama_model(tmp_path / "home" / ".ollama" / "models", tiny_gguf.read_bytes(), "tiny")
    assert registry.resolve("ollama:tiny") == blob


def test_the_same_ollama_name_in_both_default_stores(tmp_path, monkeypatch, tiny_gguf, random_tiny):
    """The per-user store and a system install's store: one model in both is fine, two are not."""
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(stores, "SYSTEM_OLLAMA_STORE", str(tmp_path / "system"))
    user = add_ollama_model(tmp_path / "home" / ".ollama" / "models", tiny_gguf.read_bytes(), "tiny")
    add_ollama_model(tmp_path / "system", random_tiny, "other")
    add_ollama_model(tmp_path / "system", tiny_gguf.read_bytes(), "same", v2=True)
    add_ollama_model(tmp_path / "home" / ".ollama" / "models", tiny_gguf.read_bytes(), "same")
    assert registry.resolve("ollama:tiny") == user and registry.resolve("ollama:same") == user
    assert registry.resolve("ollama:other").parent.parent == tmp_path / "system"
    add_ollama_model(tmp_path / "system", random_tiny, "tiny")
    assert_one_line_error(run_cli("models", "path", "ollama:tiny"), "ollama:tiny is ambiguous",
                          "name different models; set OLLAMA_MODELS")


def test_a_models_txt_line_may_name_a_model_in_a_store(ollama, lmstudio, tiny_gguf, isolated_cache):
    from test_registry import add_user_models

    blob = add_ollama_model(ollama, tiny_gguf.read_bytes(), "tiny", "q8")
    lm = add_lmstudio_file(lmstudio, "acme/Tiny-GGUF/tiny.gguf", tiny_gguf.read_bytes())
    add_user_models(isolated_cache, "from-ollama generator ollama:tiny:q8 - - mit mine",
                    "from-lmstudio judge lmstudio:acme/Tiny-GGUF - - mit mine")
    assert registry.resolve("from-ollama") == blob and registry.resolve("from-lmstudio") == lm
    assert "from-ollama generator ? yes mit" in " ".join(run_cli("models").stdout.split())
