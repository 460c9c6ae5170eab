"""The package as a user installs it: a wheel built from the checkout, installed into a fresh virtual
environment outside it, runs. It must not need files that only the checkout has (docs, tests, bench,
demo), and its metadata carries the SPDX licence (PEP 639).

The fresh environment gets dtools from the wheel alone; its dependencies (torch and the rest, too big to
install per test) come from this environment's site-packages through a .pth path line, which adds the
folder without running its .pth files, so the editable install of the checkout is not among them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.serial  # pip builds in the repository's build/ folder: one build at a time


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # this environment's setuptools (the test extra's floor is the build's): no download per test run
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(ROOT)], capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deprecat" not in (done.stdout + done.stderr).lower(), done.stderr[-3000:]
    (found,) = out.glob("dtools-*.whl")
    return found


def test_the_wheel_holds_the_package_and_its_licence(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "dtools/cli.py" in names and "dtools/fid/inception.py" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "bench/", "demo/"))]
    assert "License-Expression: MIT" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies: this environment's site-packages as a plain path (its .pth files are not run)
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dtools = env_dir / "bin" / "dtools"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(dtools), *args], cwd=work, env=env, capture_output=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import dtools; print(dtools.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(env_dir)), where  # the wheel's dtools, not the checkout's
    assert run("--help").returncode == 0
    prep = run("prep", "twemoji", "data", "--size", "8", "--limit", "4")
    assert prep.returncode == 0, prep.stderr.decode()
    assert len(list((work / "data").glob("*.png"))) == 4
    schedule = run("schedule", "cosine", "-T", "10")
    assert schedule.returncode == 0, schedule.stderr.decode()
    assert schedule.stdout.startswith(b"\x93NUMPY")
