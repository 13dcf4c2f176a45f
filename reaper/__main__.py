"""`python -m reaper`: the same as `mobvibe-reaper`."""

from reaper.cli import main

main(prog_name="mobvibe-reaper")
