"""A normal (non-editable) install works: the wheel carries what the commands read at run time.

The editable install the tests run under sees the whole source tree, so a file read from beside
the package (as models.txt once was) works here and fails for every user of the wheel. This test
builds the wheel, installs it into a folder of its own and runs the CLI from outside the repository.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the build reads; copied so that the build's scratch folders never land in the source tree.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "models.txt", "specrej_local")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple:
    """(wheel, folder the wheel was installed into) for a wheel built from this tree."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name, follow_symlinks=False)  # models.txt stays a link
    quiet = dict(capture_output=True, text=True, timeout=300)
    # no build isolation: the test extra provides setuptools, so no network is needed
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(root / "dist"), str(source)], **quiet)
    assert built.returncode == 0, built.stderr
    [wheel] = (root / "dist").glob("specrej_local-*.whl")
    target = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                           str(wheel)], **quiet)
    assert done.returncode == 0, done.stderr
    return wheel, target


def test_the_wheel_holds_the_registry_the_prompt_set_and_their_licences(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("specrej_local/data/models.txt") == (REPO / "specrej_local" / "data" / "models.txt").read_bytes()
        prompts = json.loads(zf.read("specrej_local/data/alpaca_farm_100.json"))
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "specrej_local").rglob("*.py")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert len(prompts) == 100 and all(p["prompt"] for p in prompts)
    notice = "specrej_local/data/ALPACA_FARM_NOTICE.md"
    assert notice in names and "CC BY-NC 4.0" in (REPO / notice).read_text()
    licences = {n.split("/licenses/", 1)[1] for n in names if ".dist-info/licenses/" in n}
    assert licences == {"LICENSE", notice}  # in the metadata as well, where pip's tools look


def test_the_top_level_models_txt_is_the_shipped_one():
    assert (REPO / "models.txt").resolve() == (REPO / "specrej_local" / "data" / "models.txt").resolve()


def test_the_installed_cli_lists_models_from_outside_the_repository(installed, tmp_path):
    _, target = installed
    # -S: no site processing, so the editable install's import hook (which finds any module of
    # the source tree) is not there; the dependencies come from site-packages as a plain path.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *deps]), "SPECREJ_HOME": str(tmp_path / "home")}
    env.pop("SPECREJ_MODELS", None)
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    where = subprocess.run([sys.executable, "-S", "-c", "import specrej_local.data as d; print(d.MODELS_TXT)"], **run)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(target)  # the wheel's copy, not the source tree's

    listed = subprocess.run([sys.executable, "-S", "-m", "specrej_local", "models"], **run)
    assert listed.returncode == 0, listed.stderr
    header, first, *rest = listed.stdout.splitlines()
    assert header.split()[:2] == ["ALIAS", "ROLE"]
    assert first.split()[:2] == ["smollm2-135m", "generator"] and rest
