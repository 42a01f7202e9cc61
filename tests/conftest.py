"""Shared fixtures.

Every test gets its own empty cache dir (SPECREJ_HOME), so no test sees another's downloads.
The one exception is the real default model: it is fetched once per machine into the real cache
dir and reused by every later run, because downloading 98 MB per test run would be absurd.

Two settings for a GPU run on a machine with no network (experiments/gpu_run.py), unset in CI:
SPECREJ_TEST_NGL, the layers the model tests put on the GPU (default 0; -1: all), and
SPECREJ_TEST_MODEL, a GGUF file used in place of the default model (a random-weight model of its
shape there).
"""
import contextlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest

# A shell that starts a job in the background without job control (`cmd &` in a script, some CI
# runners) ignores SIGINT in it, and an ignored signal stays ignored across exec: every CLI child
# the Ctrl-C tests start would then shrug off the SIGINT they send. Resetting it here, once, makes
# the children start with Python's own KeyboardInterrupt handler however pytest itself was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Read before any test changes it: a SPECREJ_HOME set by the caller (e.g. CI) counts as "real".
_CALLER_SPECREJ_HOME = os.environ.get("SPECREJ_HOME")


@contextlib.contextmanager
def _specrej_home(value):
    """Set (or, for None, remove) SPECREJ_HOME for the duration, whatever a test fixture did."""
    saved = os.environ.pop("SPECREJ_HOME", None)
    if value is not None:
        os.environ["SPECREJ_HOME"] = str(value)
    try:
        yield
    finally:
        os.environ.pop("SPECREJ_HOME", None)
        if saved is not None:
            os.environ["SPECREJ_HOME"] = saved


@pytest.fixture(scope="session")
def real_cache_home() -> Path:
    """The cache dir a user of this machine gets: the caller's SPECREJ_HOME, else the platform's."""
    from specrej_local.models import registry

    with _specrej_home(_CALLER_SPECREJ_HOME):
        return registry.cache_dir()


@pytest.fixture(scope="session")
def default_model(real_cache_home) -> Path:
    """Path of the real default model (smollm2-135m), downloaded at most once per machine (or the
    file SPECREJ_TEST_MODEL names)."""
    from specrej_local.models import registry

    if os.environ.get("SPECREJ_TEST_MODEL"):
        return Path(os.environ["SPECREJ_TEST_MODEL"])
    with _specrej_home(real_cache_home):
        return registry.resolve("smollm2-135m")


@pytest.fixture(scope="session")
def gpu_layers() -> int:
    """Layers the model tests put on the GPU: SPECREJ_TEST_NGL, 0 (the CPU) unless set."""
    value = os.environ.get("SPECREJ_TEST_NGL", "0")
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"SPECREJ_TEST_NGL must be a whole number, got {value!r}") from None


@pytest.fixture
def real_weights():
    """For a test that needs the real default model's answers (a count that reaches 5, an answer
    that ends): skipped where SPECREJ_TEST_MODEL puts a random-weight model in its place."""
    if os.environ.get("SPECREJ_TEST_MODEL"):
        pytest.skip("needs the real default model's answers (SPECREJ_TEST_MODEL is set)")


@pytest.fixture(scope="session")
def with_chat_template(default_model, tmp_path_factory):
    """make(template, name) -> a copy of the default model named `name` whose chat template is
    `template`, padded with spaces to the original's length (the GGUF stays valid: no offset moves)."""
    def make(template: str, name: str) -> Path:
        data = bytearray(default_model.read_bytes())
        key = b"tokenizer.chat_template"
        at = data.index(key) + len(key) + 4  # skip the value type
        length = int.from_bytes(data[at:at + 8], "little")
        assert len(template) <= length
        data[at + 8:at + 8 + length] = template.encode().ljust(length)
        path = tmp_path_factory.mktemp("models") / name
        path.write_bytes(data)
        return path

    return make


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty SPECREJ_HOME per test, and the project's own models.txt. Ollama's store and LM
    Studio's folder are empty folders of the test's own (tmp_path/ollama, tmp_path/lmstudio), so no
    test sees the models this machine's user has."""
    home = tmp_path / "specrej-home"
    monkeypatch.setenv("SPECREJ_HOME", str(home))
    monkeypatch.delenv("SPECREJ_MODELS", raising=False)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.setenv("SPECREJ_LMSTUDIO_MODELS", str(tmp_path / "lmstudio"))
    return home


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    """A small but complete GGUF file (metadata incl. a string array, two tensors) for fast tests."""
    import gguf

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny")
    writer.add_uint32("tiny.answer", 42)
    writer.add_array("tiny.words", ["alpha", "beta", "gamma"])
    writer.add_tensor("weights", np.arange(64, dtype=np.float32))
    writer.add_tensor("bias", np.ones((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def ctrl_c_at(monkeypatch):
    """`ctrl_c_at(owner, "name", k)`: the k-th call of owner.name raises KeyboardInterrupt, as a
    Ctrl-C landing there would; the calls before it run the real function."""
    def patch(owner, name: str, k: int):
        real, calls = getattr(owner, name), []

        def interrupted_on_call_k(*args, **kwargs):
            calls.append(args)
            if len(calls) == k:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, interrupted_on_call_k)
    return patch
