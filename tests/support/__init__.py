"""What the test suites share, one module per kind of help:

- waiting: `wait_for`, the one way a test waits (the benchmarks use it too)
- sqlclock: the controllable SQL clock (`set_clock`, `Clock`, `T0`)
- rows: jobs and sessions made and read in plain SQL, the way other MobVibe parts do
- roles: login roles made for a test
- commands: the installed commands run as subprocesses or in this process, their logs
- supervisor: a real `mobvibe-supervisor` started for a test
- http: requests to the HTTP endpoints a test started
- threads: calls raced on threads of their own (`run_together`)
- source: the package's Python files, for the tests that read the code

Fixtures stay in the conftest files; these are plain functions and classes.
"""
