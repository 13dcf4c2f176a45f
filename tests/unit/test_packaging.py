"""What `pip install .` ships: one import name, mobvibe, with the SQL inside it."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("mobvibe", "supervisor", "reaper", "sql")


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the source, so that the work tree gets no build/."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in SOURCES:
        # symlinks=True: mobvibe/supervisor and the others are links, as in the repository
        shutil.copytree(
            ROOT / package,
            source / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("mobvibe_supervisor-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel(wheel_path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(wheel_path)


def test_every_sql_file_is_in_the_wheel_under_mobvibe_sql(wheel: zipfile.ZipFile) -> None:
    shipped = {
        f"mobvibe/sql/{p.relative_to(ROOT / 'sql').as_posix()}"
        for p in (ROOT / "sql").rglob("*.sql")
    }
    assert "mobvibe/sql/queries.sql" in shipped
    assert "mobvibe/sql/migrations/0001_tables.sql" in shipped
    assert "mobvibe/sql/functions/claim_next_job.sql" in shipped
    assert "mobvibe/sql/privileges.sql" in shipped
    assert "mobvibe/sql/row_security.sql" in shipped
    assert shipped <= set(wheel.namelist()), sorted(shipped - set(wheel.namelist()))
    for name in shipped:
        assert wheel.read(name) == (ROOT / "sql" / name.removeprefix("mobvibe/sql/")).read_bytes()


def test_the_pages_templates_and_style_sheet_are_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    web = ROOT / "mobvibe" / "web"
    shipped = {f"mobvibe/web/{p.relative_to(web).as_posix()}" for p in web.rglob("*.*")}
    shipped = {name for name in shipped if "__pycache__" not in name}
    assert {"mobvibe/web/style.css", "mobvibe/web/templates/layout.html"} <= shipped
    assert shipped <= set(wheel.namelist()), sorted(shipped - set(wheel.namelist()))


def test_the_wheel_installs_one_top_level_name(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}
    assert tops == {"mobvibe"}
    (top_level,) = [n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt")] or [None]
    if top_level is not None:
        assert wheel.read(top_level).decode().split() == ["mobvibe"]


def test_the_wheel_declares_the_three_commands(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    for command, module in (
        ("mobvibe-supervisor", "supervisor"),
        ("mobvibe-reaper", "reaper"),
        ("mobvibe-queue", "admin"),
    ):
        assert f"{command} = mobvibe.cli.{module}:main" in text


@pytest.fixture(scope="module")
def installed(wheel_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and supervisord's distribution installed; its bin/."""
    env_dir = tmp_path_factory.mktemp("installed") / "venv"
    venv.create(env_dir, with_pip=True)
    result = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel_path),
            "supervisor",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode and "No matching distribution" in result.stderr + result.stdout:
        pytest.skip("PyPI is not reachable: supervisor (supervisord) cannot be installed")
    assert result.returncode == 0, result.stdout + result.stderr
    return env_dir / "bin"


def run_in(bin_dir: Path, *command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command of the virtualenv, run outside the source tree."""
    return subprocess.run(
        [str(bin_dir / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_wheel_installs_beside_supervisord(installed: Path, tmp_path: Path) -> None:
    # supervisord's distribution owns the top-level name `supervisor`: both must
    # install into one environment without either overwriting the other's files.
    for command in ("mobvibe-supervisor", "supervisord"):
        result = run_in(installed, command, "--version", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip()
    owners = run_in(
        installed,
        "python",
        "-I",
        "-c",
        (
            "import importlib.metadata as m; d = m.packages_distributions();"
            " print(d.get('supervisor'), d.get('mobvibe'))"
        ),
        cwd=tmp_path,
    )
    assert owners.stdout.split("\n")[0] == "['supervisor'] ['mobvibe-supervisor']", owners.stderr


def test_the_installed_package_finds_every_sql_file_it_applies(
    installed: Path, tmp_path: Path
) -> None:
    shipped = run_in(
        installed,
        "python",
        "-I",
        "-c",
        (
            "from mobvibe.sql.files import migrations, repeatables;"
            " print(*[f'migrations/{m.version:04d}_{m.name}.sql' for m in migrations()],"
            " *[r.name for r in repeatables()], sep='\\n')"
        ),
        cwd=tmp_path,
    )
    assert shipped.returncode == 0, shipped.stderr
    in_source = {
        p.relative_to(ROOT / "sql").as_posix()
        for folder in ("migrations", "functions")
        for p in (ROOT / "sql" / folder).glob("*.sql")
    } | {"privileges.sql", "row_security.sql"}
    assert "functions/claim_next_job.sql" in in_source
    assert set(shipped.stdout.split()) == in_source


def test_in_this_process_mobvibe_belongs_to_mobvibe_supervisor_alone() -> None:
    assert set(importlib.metadata.packages_distributions().get("mobvibe", [])) == {
        "mobvibe-supervisor"
    }
    assert "supervisor" not in importlib.metadata.packages_distributions()
