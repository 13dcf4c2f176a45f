"""The command lines: mobvibe-supervisor, mobvibe-reaper and mobvibe-queue."""
