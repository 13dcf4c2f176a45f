"""The process model: a parent that forks, watches and replaces worker processes that claim and run jobs."""
