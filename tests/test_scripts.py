"""The first five minutes on a stock machine: from a fresh copy of this checkout, with only the operating
system's directories on PATH (no pyenv, nothing in /usr/local), scripts/run.sh makes the project's own venv
with the system's python3, installs scope there and runs it; and `pip install .` into any venv gives a
working `scope` that serves its UI.

The copy holds what a clone would, plus uncommitted changes (tracked and untracked files, nothing ignored:
no .venv, no .tox). Its installs come from the package index pip is configured with (a cache here): about
ten seconds each.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scope_common import __version__
from tests.fixtures.docker import REPO_ROOT
from tests.fixtures.ports import free_port, free_port_pair, wait_for_port
from tests.fixtures.scope import ScopeProcess

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_TIMEOUT = 600


def system_env() -> dict[str, str]:
    """This environment as a newcomer's shell would have it: the system's PATH, and none of the variables
    that steer Python, a venv or scope's scripts (pip's own configuration stays)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SCOPE_", "PYTHON", "PYENV", "VIRTUAL_ENV", "TOX_")) and k != "PATH"
    }
    env["PATH"] = SYSTEM_PATH
    return env


def run(argv: list[str], cwd: Path, timeout: float = INSTALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=system_env(), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def fresh_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the checkout as a fresh clone of the work tree would be."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("fresh") / "scope"
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if not os.path.lexists(source):
            continue  # deleted in the work tree, not yet in git
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def test_run_sh_installs_into_a_venv_of_the_system_python_and_runs_scope(fresh_checkout: Path) -> None:
    # tox writes a PEP 832 redirect file named .venv where no venv is; an old checkout may have one.
    (fresh_checkout / ".venv").write_text(".tox/py311\n")
    first = run(["bash", "scripts/run.sh", "--version"], cwd=fresh_checkout)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip() == f"scope {__version__}"
    assert "a redirect file tox wrote" in first.stderr
    assert f"creating virtual environment {fresh_checkout}/.venv with {SYSTEM_PYTHON}" in first.stderr
    # Each phase says how long it took, and so does the whole.
    assert re.search(r"venv: ok, \d+\.\ds", first.stderr) and re.search(r"pip: ok, \d+\.\ds", first.stderr)
    assert re.search(r"ready in \d+\.\ds", first.stderr)
    config = (fresh_checkout / ".venv" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config, config
    print(f"run.sh --version, fresh: {first.stderr}")

    # Nothing went into the system's Python.
    system = run([SYSTEM_PYTHON, "-I", "-c", "import importlib.util as u; print(u.find_spec('scope'))"], cwd=Path("/"))
    assert system.stdout.strip() == "None"

    again = run(["bash", "scripts/run.sh", "--version"], cwd=fresh_checkout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip() == f"scope {__version__}"
    assert "current, skipping" in again.stderr
    assert "creating virtual environment" not in again.stderr

    # Without --version it is scope itself: probe and app, the UI served from the checkout.
    http_port, bus_port = free_port(), free_port_pair()
    served = ScopeProcess(
        "run-sh",
        [
            "bash",
            str(fresh_checkout / "scripts" / "run.sh"),
            f"--listen=127.0.0.1:{http_port}",
            f"--bus=127.0.0.1:{bus_port}",
            "--weave-dns-name=",
            "--reverse-dns=off",
            "--conntrack=off",
        ],
        env=system_env(),
    )
    try:
        wait_for_port("127.0.0.1", http_port, timeout=30)
        assert "<html" in get(f"http://127.0.0.1:{http_port}/").lower()
        assert served.terminate(signal.SIGINT) == 0, served.log()
    finally:
        served.terminate()


def test_pip_install_gives_a_scope_that_serves_its_ui(fresh_checkout: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = run([SYSTEM_PYTHON, "-m", "venv", str(venv)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    installed = run([str(venv / "bin" / "python"), "-m", "pip", "install", str(fresh_checkout)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    site = Path(
        run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).stdout.strip()
    )
    assert (site / "scope_static" / "index.html").is_file()
    assert (site / "scope" / "launch.sh").is_file(), "scope launch runs the launch.sh the package carries"

    http_port, bus_port = free_port(), free_port_pair()
    app = ScopeProcess(
        "pip-installed-app",
        [str(venv / "bin" / "scope"), "app", f"--listen=127.0.0.1:{http_port}", f"--bus=127.0.0.1:{bus_port}"],
        env=system_env(),
    )
    try:
        wait_for_port("127.0.0.1", http_port, timeout=30)
        index = get(f"http://127.0.0.1:{http_port}/")
        assert index == (site / "scope_static" / "index.html").read_text()
        assert get(f"http://127.0.0.1:{http_port}/style.css") == (site / "scope_static" / "style.css").read_text()
    finally:
        app.terminate()
