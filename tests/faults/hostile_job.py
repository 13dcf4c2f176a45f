#!/usr/bin/env python3
"""A hostile job command: what an agent steered by its prompt could try against the queue.

The prompt (JSON) names the targets the attacker would guess or find: the pids of
the supervisor and of its workers, database socket paths, credential files, and
the secret to look for (the worker login's password). Each attack reports what it
reached as one JSON datagram to the test's ledger (the abstract socket named by
$TEST_LEDGER): {"attack": NAME, "reached": [...]}, an empty list for nothing.

`probe` reads every process's environment and command line, the supervisor's and
the workers' /proc files, the credential files and the socket directories, then
SIGKILLs a sibling worker. `daemon` leaves a double-forked, `setsid` grandchild
that SIGKILLs the job's worker and supervisor and then ticks in the ledger for as
long as it lives. Either then works (ticks) for the prompt's `seconds` and exits 0,
as `work` alone does. `network` tries TCP to the prompt's `tcp` address and the
ledger's abstract socket, and prints what it reached on stdout.

Standard library only, run by its own path: a sandboxed job sees the system and its
program's file, not this repository.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import sys
import time
from typing import Any

TICK = 0.02
SOCKET_GLOBS = (
    "/tmp/*/.s.PGSQL.*",
    "/tmp/*/*/.s.PGSQL.*",
    "/run/postgresql/.s.PGSQL.*",
    "/var/run/postgresql/.s.PGSQL.*",
)


class Ledger:
    """The test's collector: findings and ticks."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.connect("\0" + os.environ["TEST_LEDGER"])

    def found(self, attack: str, reached: list[object]) -> None:
        self.sock.send(json.dumps({"attack": attack, "reached": reached}).encode())

    def tick(self, role: str) -> None:
        name = f"{os.environ['JOB_ID']}.{os.environ['ATTEMPT']}.{role}.{os.getpid()}"
        self.sock.send(f"{name} {time.monotonic():.6f}".encode())


def read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def holds_secret(path: str, secret: bytes) -> bool:
    return secret in read(path)


def processes() -> list[str]:
    try:
        return [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []


def probe(ledger: Ledger, plan: dict[str, Any]) -> None:
    secret = str(plan["secret"]).encode()
    leaking = [
        int(pid)
        for pid in processes()
        if any(holds_secret(f"/proc/{pid}/{name}", secret) for name in ("environ", "cmdline"))
    ]
    ledger.found("environ", leaking)
    ledger.found("proc_of_supervisor", telling_proc([plan["supervisor"]], secret))
    ledger.found("proc_of_workers", telling_proc(plan["workers"], secret))
    ledger.found("credential_files", [p for p in plan["files"] if holds_secret(p, secret)])
    ledger.found("database_sockets", connectable([*plan["sockets"], *found_sockets()]))
    siblings = [pid for pid in plan["workers"] if pid not in ancestors()]
    ledger.found("signal_sibling", signalled(siblings, signal.SIGKILL))


def telling_proc(pids: list[int], secret: bytes) -> list[str]:
    """The files of /proc/PID that tell the secret (a pid may name another process here:
    the sandbox's own first process is 1, as the supervisor is in a container)."""
    paths = [f"/proc/{pid}/{name}" for pid in pids for name in ("environ", "cmdline")]
    return [path for path in paths if holds_secret(path, secret)]


def ancestors() -> set[int]:
    """This process's ancestors, as its /proc shows them."""
    found, pid = set(), os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        stat = read(f"/proc/{pid}/stat")
        pid = int(stat.rpartition(b")")[2].split()[1]) if stat else 0
    return found


def found_sockets() -> list[str]:
    return sorted({path for pattern in SOCKET_GLOBS for path in glob.glob(pattern)})


def connectable(paths: list[str]) -> list[str]:
    reached = []
    for path in dict.fromkeys(paths):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except OSError:
                continue
        reached.append(path)
    return reached


def signalled(pids: list[int], sig: int) -> list[int]:
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            continue
        reached.append(pid)
    return reached


def daemon(ledger: Ledger, plan: dict[str, Any]) -> None:
    """Double fork and setsid: a grandchild in a session of its own, whose parent is gone."""
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    time.sleep(0.3)  # the job is well under way
    victims = [*plan["workers"], plan["supervisor"]]
    ledger.found("kill_supervisor", signalled(victims, signal.SIGKILL))
    while True:
        ledger.tick("daemon")
        time.sleep(TICK)


def work(ledger: Ledger, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ledger.tick("main")
        time.sleep(TICK)


def network(plan: dict[str, Any]) -> None:
    """What the network shows (on stdout: the ledger itself may be out of reach)."""
    reached = []
    host, port = plan["tcp"]
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
            reached.append(f"tcp {host}:{port}")
        except OSError:
            pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect("\0" + os.environ["TEST_LEDGER"])
            reached.append("the host's abstract Unix sockets")
        except OSError:
            pass
    print(json.dumps({"attack": "network", "reached": reached}))


def main() -> None:
    plan = json.loads(sys.stdin.read())
    if plan["mode"] == "network":
        network(plan)
        return
    ledger = Ledger()
    if plan["mode"] == "probe":
        probe(ledger, plan)
    elif plan["mode"] == "daemon":
        daemon(ledger, plan)
    work(ledger, float(plan.get("seconds", 0)))


if __name__ == "__main__":
    main()
