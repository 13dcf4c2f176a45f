"""The process model: a parent that forks, watches and replaces the workers that run jobs."""
