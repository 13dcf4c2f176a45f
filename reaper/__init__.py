"""The reaper: requeues attempts whose heartbeat expired, and deletes old finished jobs.

One `run_once()` (sweep.py) serves `mobvibe-reaper --once`, the daemon loop
(daemon.py) and the reaper child that the supervisor forks.
"""
