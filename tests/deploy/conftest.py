"""Fixtures of the image tests: a Docker engine, the base image, the built image, a database.

The image tests skip, with the reason, where no engine answers. Build and test
times and the image size are printed at the end of the run.
"""

from __future__ import annotations

import gc
import os
import secrets
import subprocess
import time
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from tests.deploy.support import DEPLOY, DOCKERFILE, ROOT

BASE_IMAGE = os.environ.get("MOBVIBE_BASE_IMAGE", "mobvibe/python-base:bookworm")
IMAGE = "mobvibe/queue:test"
# Containers reach PostgreSQL only with --network host, so the image tests use
# a TCP server on this machine, not the embedded one behind a Unix socket.
CONTAINER_PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
MEASURES: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASURES:
        terminalreporter.write_sep("-", "deploy measurements")
        for name, value in MEASURES.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of a running Docker engine; skip when none answers."""
    try:
        import docker
    except ImportError:
        pytest.skip("the docker Python package is not installed (pip install '.[dev]')")
    client, reason = None, ""
    try:
        client = docker.from_env(version="auto", timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine here
        reason = type(exc).__name__
    if reason:
        # The failed attempt leaves a socket behind in docker-py's pool: collect it
        # here (outside the except block, which keeps it alive), where its
        # ResourceWarning does not turn into an error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            if client is not None:
                client.close()
            client = None
            gc.collect()
        pytest.skip(
            f"no Docker engine answers ({reason}); start one with "
            "deploy/docker/base/make-base-image.sh (as root)"
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The local stand-in base image; made by make-base-image.sh when it is missing."""
    import docker

    try:
        docker_client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    script = DEPLOY / "docker" / "base" / "make-base-image.sh"
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MOBVIBE_BASE_IMAGE": BASE_IMAGE},
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot make the base image {BASE_IMAGE}: "
            f"{(result.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    MEASURES["base image made in"] = f"{time.monotonic() - started:.0f} s"
    return BASE_IMAGE


@pytest.fixture(scope="session")
def image(docker_client: Any, base_image: str) -> str:
    """deploy/docker/Dockerfile built on the local base (pip reaches PyPI via the host network)."""
    started = time.monotonic()
    log: list[str] = []
    for chunk in docker_client.api.build(
        path=str(ROOT),
        dockerfile=str(DOCKERFILE.relative_to(ROOT)),
        tag=IMAGE,
        buildargs={"BASE": base_image},
        network_mode="host",
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "stream" in chunk:
            log.append(chunk["stream"])
        if "error" in chunk:
            pytest.fail(f"docker build failed: {chunk['error']}\n{''.join(log)[-3000:]}")
    MEASURES["image build (cached layers reused when unchanged)"] = (
        f"{time.monotonic() - started:.1f} s"
    )
    size = docker_client.images.get(IMAGE).attrs["Size"]
    MEASURES["image size"] = f"{size / 1e6:.0f} MB ({IMAGE}, base {base_image})"
    return IMAGE


@pytest.fixture(scope="session")
def container_pg() -> str:
    """A PostgreSQL server that containers on the host network can reach."""
    candidates = [
        os.environ.get("DEPLOY_TEST_DATABASE_URL"),
        os.environ.get("TEST_DATABASE_URL"),
        CONTAINER_PG_DEFAULT,
    ]
    for url in filter(None, candidates):
        host = str(conninfo.conninfo_to_dict(url).get("host", ""))
        if not host or host.startswith("/"):
            continue  # a Unix socket is not reachable from a container
        try:
            with psycopg.connect(url, connect_timeout=3, autocommit=True):
                return url
        except psycopg.OperationalError:
            continue
    pytest.skip(
        "no PostgreSQL on 127.0.0.1:5432 (or DEPLOY_TEST_DATABASE_URL) for the containers to reach"
    )


@pytest.fixture
def fresh_database(container_pg: str) -> Iterator[str]:
    """A new, empty database on the containers' server, dropped afterwards."""
    name = f"mobvibe_deploy_{secrets.token_hex(4)}"
    with psycopg.connect(container_pg, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield conninfo.make_conninfo(container_pg, dbname=name)
    with psycopg.connect(container_pg, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def containers(docker_client: Any) -> Iterator[list[Any]]:
    """Containers a test starts; removed at its end, running or not."""
    started: list[Any] = []
    yield started
    for container in started:
        try:
            container.remove(force=True, v=True)
        except Exception:  # noqa: BLE001, S110 - already gone
            pass
