"""What installs is one namespace, ``callsight.*``: nothing generic at the top of site-packages."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERIC = ("proto", "server", "pipeline", "storage", "loadtest", "tests")


def test_the_installed_distribution_has_one_top_level_name() -> None:
    dist = importlib.metadata.distribution("callsight")
    assert (dist.read_text("top_level.txt") or "").split() == ["callsight"]


def test_a_built_wheel_holds_nothing_outside_callsight(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "data", "*.egg-info", "__pycache__"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("callsight-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"callsight"}
    for expected in (
        "callsight/v1/ingest_pb2.py",
        "callsight/core/errors.py",
        "callsight/server/app.py",
        "callsight/pipeline/encode.py",
        "callsight/storage/migrations/0001_initial.sql",
        "callsight/loadtest/__main__.py",
    ):
        assert expected in names


def test_every_module_imports_from_outside_the_checkout(tmp_path: Path) -> None:
    # From another directory the checkout's folders are not on sys.path: only the install is.
    probe = (
        "import importlib, pkgutil, callsight\n"
        "names = [m.name for m in pkgutil.walk_packages(callsight.__path__, 'callsight.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
        f"for generic in {GENERIC!r}:\n"
        "    try: importlib.import_module(generic)\n"
        "    except ModuleNotFoundError: continue\n"
        "    raise SystemExit(f'top-level {generic} is importable')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 40


def test_the_load_tester_runs_as_a_module_from_anywhere(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "callsight.loadtest", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "fleet" in done.stdout
