"""The status website: the queue's pages and their JSON API, read-only, over one database
connection; served by the supervisor's HTTP child and by `mobvibe-queue web`."""
