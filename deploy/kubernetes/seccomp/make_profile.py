#!/usr/bin/env python3
"""Write the seccomp profile of the supervisor's pods: the container runtime's default, with
what bubblewrap needs to make a job's sandbox, and nothing more.

The default is Docker's profile (containerd's RuntimeDefault comes from the same
file), as Debian ships it in golang-github-docker-docker-dev; `make seccomp-profile`
downloads that package and runs

    python3 deploy/kubernetes/seccomp/make_profile.py DEFAULT_JSON > mobvibe-sandbox.json

Two changes, each said in the profile's rules themselves:
- the namespaces and mounts of bwrap (`clone` and `unshare` with namespace flags,
  `mount`, `umount2`, `pivot_root`), which the default allows only to a container
  holding CAP_SYS_ADMIN. Without capabilities, they work only inside a user namespace
  the process made itself, on mounts that namespace owns: nothing of the container's
  own or of the host's (deploy/README.md, "The sandbox");
- io_uring left out, as the runtimes' newer defaults do (a history of kernel bugs,
  and no agent needs it).
"""

from __future__ import annotations

import json
import sys

SANDBOX_RULE = {
    "names": ["clone", "unshare", "mount", "umount2", "pivot_root"],
    "action": "SCMP_ACT_ALLOW",
    "args": [],
    "comment": "bubblewrap: a job's sandbox in namespaces of its own (clone, unshare) "
    "whose root it mounts (mount, pivot_root, umount2); without capabilities these work "
    "only in a user namespace the caller made",
    "includes": {},
    "excludes": {},
}
LEFT_OUT = {"io_uring_setup", "io_uring_enter", "io_uring_register"}


def sandboxed(default: dict) -> dict:
    """The default profile with the sandbox's rule and without io_uring."""
    rules = []
    for rule in default["syscalls"]:
        names = [name for name in rule["names"] if name not in LEFT_OUT]
        if names:
            rules.append({**rule, "names": names})
    return {**default, "syscalls": [*rules, SANDBOX_RULE]}


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as source:
        default = json.load(source)
    json.dump(sandboxed(default), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
