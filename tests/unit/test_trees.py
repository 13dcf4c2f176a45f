"""A workspace's tree is measured and removed without ever following a link out of it: real
files, real links planted to /, to a sibling workspace and to a file outside, and a
directory swapped for a link while the removal runs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mobvibe.supervisor import trees


@pytest.fixture
def root(tmp_path: Path) -> Path:
    made = tmp_path / "workspaces"
    made.mkdir()
    return made


@pytest.fixture(autouse=True)
def only_under(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A safety net: an unlink or rmdir anywhere but under the test's directory fails the
    test instead of reaching the host (the links below point at /)."""
    for name in ("unlink", "rmdir"):
        real = getattr(os, name)

        def guarded(path: str, *, dir_fd: int | None = None, _real: Any = real) -> None:
            where = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else path
            assert where.startswith(str(tmp_path)), f"removal outside the test: {where}/{path}"
            _real(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, name, guarded)


@pytest.fixture
def dir_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def workspace(root: Path, name: str, files: int = 2) -> Path:
    made = root / name
    (made / "src" / "deep").mkdir(parents=True)
    for i in range(files):
        (made / "src" / "deep" / f"f{i}").write_bytes(b"x" * 10_000)
    (made / "README").write_text("hello")
    return made


def test_planted_links_are_removed_themselves_and_nothing_they_point_at(
    root: Path, dir_fd: int, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    sibling = workspace(root, "sibling")
    planted = workspace(root, "planted")
    (planted / "to-root").symlink_to("/")
    (planted / "src" / "to-sibling").symlink_to(sibling)
    (planted / "src" / "deep" / "to-file").symlink_to(outside / "precious")
    (planted / "to-outside-relative").symlink_to("../../outside")
    assert trees.remove_tree(dir_fd, "planted") == []
    assert not planted.exists() and not planted.is_symlink()
    assert (outside / "precious").read_text() == "keep me"
    assert sorted(p.name for p in (sibling / "src" / "deep").iterdir()) == ["f0", "f1"]
    assert os.path.isdir("/usr/bin")


def test_a_directory_swapped_for_a_link_after_the_listing_is_not_entered(
    root: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a live process could run: `src` is listed as a directory, then replaced by
    a link to a sibling workspace before the removal enters it."""
    sibling = workspace(root, "sibling")
    victim = workspace(root, "victim")
    real_entries: Callable[[int], list[os.DirEntry[str]]] = trees.entries

    def swap_after_listing(fd: int) -> list[os.DirEntry[str]]:
        listed = real_entries(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == str(victim) and (victim / "src").is_dir():
            (victim / "src").rename(victim / "moved-away")
            (victim / "src").symlink_to(sibling)
        return listed

    monkeypatch.setattr(trees, "entries", swap_after_listing)
    problems = trees.remove_tree(dir_fd, "victim")
    # the link is gone; the renamed directory was not listed, so it stays: reported
    assert (victim / "moved-away").is_dir()
    assert not (victim / "src").is_symlink()
    assert sorted(p.name for p in (sibling / "src" / "deep").iterdir()) == ["f0", "f1"]
    assert (sibling / "README").read_text() == "hello"
    assert problems and all("victim" in p for p in problems), problems


def test_a_fifo_swapped_in_never_blocks_the_removal(
    root: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    victim = workspace(root, "victim")
    real_entries = trees.entries

    def swap(fd: int) -> list[os.DirEntry[str]]:
        listed = real_entries(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == str(victim) and (victim / "src").is_dir():
            (victim / "src").rename(tmp_path / "elsewhere")
            (victim / "src").symlink_to(fifo)
        return listed

    monkeypatch.setattr(trees, "entries", swap)
    trees.remove_tree(dir_fd, "victim")
    assert (tmp_path / "elsewhere").is_dir()  # the swap did happen
    assert not victim.exists()
    assert fifo.exists()


def test_read_only_and_unreadable_directories_are_removed(root: Path, dir_fd: int) -> None:
    """As a Go module cache leaves them (0555), or an agent's chmod 000."""
    made = workspace(root, "locked")
    (made / "src" / "deep").chmod(0o555)
    (made / "sealed").mkdir()
    (made / "sealed" / "x").write_text("x")
    (made / "sealed").chmod(0)
    assert trees.remove_tree(dir_fd, "locked") == []
    assert not made.exists()


def test_a_link_in_place_of_the_workspace_is_unlinked_alone(
    root: Path, dir_fd: int, tmp_path: Path
) -> None:
    sibling = workspace(root, "sibling")
    (root / "impostor").symlink_to(sibling)
    assert trees.remove_tree(dir_fd, "impostor") == []
    assert not (root / "impostor").is_symlink()
    assert (sibling / "README").exists()


def test_what_cannot_be_removed_is_reported_and_the_rest_goes(
    root: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = workspace(root, "stubborn")
    real_unlink = os.unlink

    def refuse_one(path: str, *, dir_fd: int | None = None) -> None:
        if path == "f0":
            raise PermissionError(1, "Operation not permitted")
        real_unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", refuse_one)
    problems = trees.remove_tree(dir_fd, "stubborn")
    assert any("f0: Operation not permitted" in p for p in problems), problems
    assert sorted(p.name for p in made.rglob("*")) == ["deep", "f0", "src"]


def test_sizes_count_links_as_themselves_and_hard_links_once(
    root: Path, dir_fd: int, tmp_path: Path
) -> None:
    made = workspace(root, "measured", files=1)
    alone = trees.tree_bytes(dir_fd, "measured")
    assert alone >= 10_000
    big = tmp_path / "big"
    big.write_bytes(b"y" * 1_000_000)
    (made / "to-root").symlink_to("/")
    (made / "to-big").symlink_to(big)
    os.link(made / "src" / "deep" / "f0", made / "hard")
    with_links = trees.tree_bytes(dir_fd, "measured")
    assert with_links - alone < 10_000, (alone, with_links)  # neither / nor big counted
