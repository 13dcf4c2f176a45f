"""Workspaces on disk: taken cold then warm, kept within their limits least recently used
first, never one an attempt holds, and a failure to remove one logged and skipped."""

from __future__ import annotations

import logging
import math
import os
import stat
import uuid
from pathlib import Path

import pytest

from mobvibe import metrics
from mobvibe.errors import ConfigError
from mobvibe.supervisor import workspaces
from mobvibe.supervisor.eviction import Keeper, Kept
from mobvibe.supervisor.workspaces import take
from mobvibe.vocabulary import WorkspaceStart


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return Path(workspaces.prepare_root(str(tmp_path / "workspaces")))


def kept_for(root: Path, size: int = 0, used: float = 1_000_000.0) -> Path:
    """A workspace of a new session, `size` bytes of file, last used at `used` (Unix time)."""
    made = root / str(uuid.uuid4())
    made.mkdir()
    (made / "data").write_bytes(b"x" * size)
    os.utime(made, (used, used))
    return made


def swept(keeper: Keeper) -> list[Kept]:
    """The workspaces kept once the sweeps, measures and removals are done, as the parent's
    loop goes through them."""
    kept = keeper.sweep()
    keeper.step(math.inf)
    while keeper.resweep:
        kept = keeper.sweep()
        keeper.step(math.inf)
    assert not keeper.busy
    return kept


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_a_session_gets_its_own_directory_cold_then_warm(root: Path) -> None:
    session = uuid.uuid4()
    cold_before = metrics.WORKSPACE_STARTS.value(WorkspaceStart.COLD)
    first = take(str(root), session)
    assert (first.path, first.warm) == (str(root / str(session)), False)
    assert stat.S_IMODE(os.stat(first.path).st_mode) == 0o700
    Path(first.path, "kept").write_text("from the first prompt")
    os.utime(first.path, (1, 1))  # an agent moving its workspace's clock
    first.give_back()
    assert os.stat(first.path).st_mtime > 1_000_000  # its last use: the attempt's end
    second = take(str(root), session)
    assert second.warm and Path(second.path, "kept").read_text() == "from the first prompt"
    second.give_back()
    assert metrics.WORKSPACE_STARTS.value(WorkspaceStart.COLD) == cold_before + 1


def test_a_link_in_place_of_a_workspace_gives_way_to_a_fresh_directory(
    root: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    session = uuid.uuid4()
    (root / str(session)).symlink_to(elsewhere)
    taken = take(str(root), session)
    assert not taken.warm and not os.path.islink(taken.path) and os.listdir(taken.path) == []
    taken.give_back()
    assert (elsewhere / "precious").read_text() == "keep"


def test_the_least_recently_used_go_first_beyond_the_count(root: Path) -> None:
    old, middle, new = (kept_for(root, used=t) for t in (1e6, 2e6, 3e6))
    evictions = metrics.WORKSPACE_EVICTIONS.value()
    kept = swept(Keeper(str(root), max_count=2))
    assert {k.name for k in kept} == {middle.name, new.name}
    assert not old.exists()
    assert metrics.WORKSPACE_EVICTIONS.value() == evictions + 1
    assert metrics.WORKSPACES.value() == 2


def test_the_least_recently_used_go_first_beyond_the_bytes(root: Path) -> None:
    old, middle, new = (kept_for(root, 100_000, used=t) for t in (1e6, 2e6, 3e6))
    keeper = Keeper(str(root), max_bytes=250_000)
    kept = swept(keeper)
    assert [k.name for k in kept] == [middle.name, new.name]
    assert not old.exists()
    assert metrics.WORKSPACE_BYTES.value() == sum(k.size for k in kept) <= 250_000
    Path(new, "more").write_bytes(b"y" * 100_000)
    os.utime(new, (4e6, 4e6))  # used again since: measured again
    assert [k.name for k in swept(keeper)] == [new.name]


def test_a_workspace_an_attempt_holds_is_never_evicted(root: Path) -> None:
    held_session = uuid.uuid4()
    held = take(str(root), held_session)
    os.utime(held.path, (1, 1))  # the oldest of all
    newer = kept_for(root, used=2e6)
    try:
        kept = swept(Keeper(str(root), max_count=1))
        assert [k.name for k in kept] == [str(held_session)]
        assert not newer.exists() and os.path.isdir(held.path)
    finally:
        held.give_back()


def test_an_evicted_workspace_is_out_of_its_sessions_reach_at_once(root: Path) -> None:
    """Its session's next attempt starts cold, never in a half-removed tree."""
    session = uuid.uuid4()
    taken = take(str(root), session)
    Path(taken.path, "a").write_text("a")
    taken.give_back()
    os.utime(taken.path, (1, 1))
    kept_for(root, used=2e6)
    swept(Keeper(str(root), max_count=1))
    again = take(str(root), session)
    assert not again.warm and os.listdir(again.path) == []
    again.give_back()


def test_one_that_cannot_be_removed_is_logged_and_skipped(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stuck, old, new = (kept_for(root, used=t) for t in (1e6, 2e6, 3e6))
    real_rename = os.rename

    def refuse(src: str, dst: str, **fds: int) -> None:
        if src == stuck.name:
            raise PermissionError(1, "Operation not permitted")
        real_rename(src, dst, **fds)

    monkeypatch.setattr(os, "rename", refuse)
    caplog.set_level(logging.INFO)
    kept = swept(Keeper(str(root), max_count=2))
    assert {k.name for k in kept} == {stuck.name, new.name} and not old.exists()
    (skipped,) = events(caplog, "workspace_eviction_skipped")
    assert skipped.session_id == stuck.name and "not permitted" in skipped.error  # type: ignore[attr-defined]
    (evicted,) = events(caplog, "workspace_evicted")
    assert evicted.session_id == old.name and evicted.over == "count"  # type: ignore[attr-defined]


def test_leftovers_are_removed_and_other_entries_left_alone(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sibling = kept_for(root, 10, used=3e6)
    leftover = root / f"{workspaces.EVICTED_PREFIX}{uuid.uuid4()}-0a0b0c0d"
    (leftover / "nested").mkdir(parents=True)
    (leftover / "to-root").symlink_to("/")
    (leftover / "nested" / "to-sibling").symlink_to(sibling)
    (root / "lost+found").mkdir()
    (root / "notes.txt").write_text("an operator's")
    (root / str(uuid.uuid4())).symlink_to(sibling)  # not a directory: not a workspace
    kept = swept(Keeper(str(root), max_count=1))
    assert [k.name for k in kept] == [sibling.name]
    assert not leftover.exists()
    assert (root / "lost+found").is_dir() and (root / "notes.txt").exists()
    assert (sibling / "data").read_bytes() == b"x" * 10


def test_a_directory_every_job_would_see_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="every session would see every workspace"):
        workspaces.prepare_root("/etc/mobvibe-workspaces")
    link = tmp_path / "link"
    link.symlink_to("/usr/share")
    with pytest.raises(ConfigError, match="every session would see"):
        workspaces.prepare_root(str(link / "ws"))
    assert not os.path.exists("/etc/mobvibe-workspaces")


def test_a_large_removal_goes_a_slice_at_a_time(root: Path) -> None:
    """The parent's loop must keep turning: an evicted tree is removed in steps."""
    big = kept_for(root, used=1e6)
    for d in range(20):
        (big / f"d{d}").mkdir()
        for f in range(100):
            (big / f"d{d}" / f"f{f}").touch()
    os.utime(big, (1e6, 1e6))
    kept_for(root, used=2e6)
    keeper = Keeper(str(root), max_count=1)
    keeper.sweep()
    assert not big.exists() and keeper.removing  # out of its session's reach at once
    (trash,) = (p for p in root.iterdir() if p.name.startswith(workspaces.EVICTED_PREFIX))
    slices = 0
    while keeper.removing:
        keeper.step(0.0)  # one step each
        slices += 1
    assert slices > 2 and not trash.exists()


def test_a_workspace_evicted_while_its_lock_was_awaited_is_made_anew(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent renames a workspace under its exclusive lock; a worker waiting for its
    shared lock then holds a directory no longer at its session's name, and starts over."""
    session = uuid.uuid4()
    first = take(str(root), session)
    Path(first.path, "old").write_text("old")
    first.give_back()
    real_flock = workspaces.fcntl.flock
    evicted = []

    def evicted_meanwhile(fd: int, operation: int) -> None:
        if not evicted:
            evicted.append(root / f"{workspaces.EVICTED_PREFIX}{session}-x")
            os.rename(first.path, evicted[0])
        real_flock(fd, operation)

    monkeypatch.setattr(workspaces.fcntl, "flock", evicted_meanwhile)
    again = take(str(root), session)
    assert not again.warm and os.listdir(again.path) == []
    assert (evicted[0] / "old").read_text() == "old"
    again.give_back()


def test_sizes_are_measured_a_slice_at_a_time_and_count_once_measured(root: Path) -> None:
    """Until a workspace is measured, what is counted so far stands for its size: never an
    eviction too many while the parent's loop goes through a large tree."""
    old, new = (kept_for(root, 100_000, used=t) for t in (1e6, 2e6))
    keeper = Keeper(str(root), max_bytes=150_000)
    assert [k.size for k in keeper.sweep()] == [0, 0] and keeper.busy
    assert old.exists()
    keeper.step(math.inf)
    assert keeper.resweep  # measured: the limits are looked at again
    assert [k.name for k in keeper.sweep()] == [new.name]
    assert not old.exists()


def test_a_workspace_in_use_is_measured_again_after_its_attempt(root: Path) -> None:
    session = uuid.uuid4()
    taken = take(str(root), session)
    keeper = Keeper(str(root))
    first = swept(keeper)[0].size
    Path(taken.path, "more").write_bytes(b"z" * 100_000)  # moves its modification time
    assert swept(keeper)[0].size == first  # not while the attempt runs
    taken.give_back()
    assert swept(keeper)[0].size >= first + 100_000
