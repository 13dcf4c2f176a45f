"""What `pip install .` ships: the SQL inside the package, and `supervisor` meaning us."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _can_build_without_isolation() -> bool:
    # pyproject asks for setuptools>=68 and wheel; use the venv's only if they are there.
    if importlib.util.find_spec("wheel") is None:
        return False
    version = importlib.metadata.version("setuptools").split(".")
    return int(version[0]) >= 68


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from a copy of the source, so that the work tree gets no build/."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    for package in ("supervisor", "reaper", "sql"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
               str(source)]
    if _can_build_without_isolation():
        command.insert(4, "--no-build-isolation")
    built = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("mobvibe_supervisor-*.whl")
    return zipfile.ZipFile(path)


def test_every_sql_file_is_in_the_wheel_under_supervisor_sql(wheel: zipfile.ZipFile) -> None:
    shipped = {f"supervisor/sql/{p.relative_to(ROOT / 'sql').as_posix()}"
               for p in (ROOT / "sql").rglob("*.sql")}
    assert "supervisor/sql/queries.sql" in shipped
    assert "supervisor/sql/migrations/0001_tables.sql" in shipped
    assert shipped <= set(wheel.namelist()), sorted(shipped - set(wheel.namelist()))


def test_the_sql_in_the_wheel_is_the_sql_of_the_source(wheel: zipfile.ZipFile) -> None:
    for path in (ROOT / "sql").rglob("*.sql"):
        name = f"supervisor/sql/{path.relative_to(ROOT / 'sql').as_posix()}"
        assert wheel.read(name) == path.read_bytes(), name


def test_the_wheel_declares_the_three_commands(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    for command in ("mobvibe-supervisor", "mobvibe-reaper", "mobvibe-queue"):
        assert f"{command} = " in text


def test_supervisor_is_imported_from_mobvibe_supervisor(tmp_path: Path) -> None:
    # Run from an empty directory with -I, so that neither this work tree's
    # *.egg-info nor a stray supervisord on PYTHONPATH is seen: only what is installed.
    probe = ("import importlib.metadata as m, supervisor, supervisor.sqlfiles as s; "
             "print(m.packages_distributions().get('supervisor')); "
             "print(len(s.migrations()) >= 4 and 'claim_next_job' in s.queries())")
    result = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["['mobvibe-supervisor']", "True"]


def test_in_this_process_supervisor_belongs_to_mobvibe_supervisor_alone() -> None:
    # The work tree's egg-info can list the distribution twice here; it is one name.
    owners = importlib.metadata.packages_distributions().get("supervisor", [])
    assert set(owners) == {"mobvibe-supervisor"}
