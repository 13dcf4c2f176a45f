# Two commands on a fresh machine: `make run` (the main job, on an embedded
# PostgreSQL unless DATABASE_URL is set) and `make test`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST := $(PY) -m pytest
TOOLS := .tools
PROMTOOL := $(TOOLS)/promtool
WORKERS ?= 4

.PHONY: venv bubblewrap pgbouncer chromium wal2json run demo-jobs lint format test test-unit test-contract \
        test-processes test-reaper test-cli test-web test-stateful test-faults test-deploy soak \
        bench image deploy-check seccomp-profile screenshots clean

# pip's errors only: setuptools warns on every editable install that a folder
# named like a package may shadow it (information: ours are mapped under
# mobvibe), and a machine's pip configuration may add warnings of its own.
PIP_INSTALL := $(PY) -m pip install --quiet --quiet

# What running needs (the embedded PostgreSQL included), for `make run`.
$(BIN)/.installed-run: pyproject.toml
	@echo "Installing mobvibe-supervisor and the embedded PostgreSQL into $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) --upgrade pip
	@$(PIP_INSTALL) -e '.[embedded]'
	@touch $@

# The test and lint tooling as well, for every other target.
$(BIN)/.installed: pyproject.toml $(BIN)/.installed-run
	@echo "Installing the test and lint tooling into $(VENV) ..."
	@$(PIP_INSTALL) -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

# promtool checks a live /metrics scrape; Debian ships it in the prometheus
# package, of which only the one binary is unpacked here.
$(PROMTOOL):
	@mkdir -p $(TOOLS)/deb
	@( cd $(TOOLS)/deb && (apt-get download prometheus >/dev/null 2>&1 || \
	   (apt-get update >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1)) && \
	   dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool ../promtool ) || \
	   echo "promtool unavailable: the promtool check will be skipped"
	@rm -rf $(TOOLS)/deb

# bubblewrap, the sandbox every --exec attempt runs in (deploy/README.md, "The
# sandbox"): Debian's package, installed as root where the package lists are
# reachable. Without it the supervisor refuses to run --exec commands, and so do
# the tests that run them.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1)) ) || \
	  echo "bubblewrap unavailable: mobvibe-supervisor --exec (and its tests) will say so"

# PgBouncer, for the test of the supervisor behind a transaction pooler:
# Debian's package, installed as root where the package lists are reachable.
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q pgbouncer >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q pgbouncer >/dev/null 2>&1)) ) || \
	  echo "pgbouncer unavailable: the PgBouncer test will be skipped"

# wal2json, the logical decoding plugin Supabase Realtime reads the
# supabase_realtime publication with, for the test of what the phone receives
# live (tests/contract/test_realtime.py): Debian's package for the machine's
# PostgreSQL 15, installed as root where the package lists are reachable.
wal2json:
	@[ -f /usr/lib/postgresql/15/lib/wal2json.so ] || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q postgresql-15-wal2json >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql-15-wal2json >/dev/null 2>&1)) ) || \
	  echo "wal2json unavailable: the Realtime test will be skipped"

# Headless Chromium, for the browser tests of the status pages: Debian's package,
# installed as root where the package lists are reachable.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  ( [ "$$(id -u)" = 0 ] && (apt-get install -y -q chromium >/dev/null 2>&1 || \
	    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ) || \
	  echo "chromium unavailable: the browser tests of the status pages will be skipped"

# The demo: five jobs, one of which fails on purpose. While the supervisor runs,
# `stats --until-drained` prints a line every 2 s (the wait for the retry included).
run: $(BIN)/.installed-run
	$(BIN)/mobvibe-queue migrate
	$(BIN)/mobvibe-queue enqueue --priority 5 "Build a todo app with React Native" \
	    "Add dark mode to the settings screen" "Write unit tests for the login form"
	$(BIN)/mobvibe-queue enqueue --priority 10 "Fix the crash on startup"
	$(BIN)/mobvibe-queue enqueue --max-retries 2 "This prompt asks the demo handler to fail"
	@echo "Running them on $(WORKERS) workers: the job that asks to fail is retried once, after a"
	@echo "backoff of about 10 s, then dead-lettered; the supervisor stops once the queue is drained."
	@$(BIN)/mobvibe-queue stats --until-drained & progress=$$!; \
	  $(BIN)/mobvibe-supervisor --demo --workers $(WORKERS) --drain --log-format text \
	    --metrics-port 0 --poll-interval 1; status=$$?; \
	  [ $$status = 0 ] || kill $$progress 2>/dev/null; wait $$progress; exit $$status
	$(BIN)/mobvibe-queue stats
	@echo "Next: $(BIN)/mobvibe-queue jobs list, $(BIN)/mobvibe-queue web (the status pages on"
	@echo "http://127.0.0.1:9400/), $(BIN)/mobvibe-queue psql; make test runs the tests."

# Style and types: ruff (lint and format) on everything, mypy --strict on the package.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: venv $(PROMTOOL) $(SECCOMP_DEFAULT) $(APPARMOR) bubblewrap pgbouncer chromium wal2json
	PATH="$(CURDIR)/$(TOOLS):$$PATH" $(PYTEST) -m "not soak" -q

test-unit: venv
	$(PYTEST) tests/unit -q

test-contract: venv wal2json
	$(PYTEST) tests/contract -q

test-processes: venv $(PROMTOOL) bubblewrap pgbouncer
	PATH="$(CURDIR)/$(TOOLS):$$PATH" $(PYTEST) tests/processes -q

test-reaper: venv
	$(PYTEST) tests/reaper -q

test-cli: venv
	$(PYTEST) tests/cli -q

test-web: venv chromium
	$(PYTEST) tests/web -q

# The README's pictures of the status pages, taken by the browser tests.
screenshots: venv chromium
	MOBVIBE_SCREENSHOTS="$(CURDIR)/docs/screenshots" $(PYTEST) tests/web/test_status_page.py -q

test-stateful: venv
	$(PYTEST) tests/stateful -q

# The faults, and the hostile-job matrix: each attack of a job on the queue, what it
# reached, what stopped it.
test-faults: venv bubblewrap
	$(PYTEST) tests/faults -q

test-deploy: venv $(SECCOMP_DEFAULT) $(APPARMOR)
	$(PYTEST) tests/deploy -q

# The state machine with the long Hypothesis profile (random, 1,000 examples of
# 80 steps; tens of minutes), then the tests marked soak.
soak: venv
	HYPOTHESIS_PROFILE=long $(PYTEST) tests/stateful -q -s
	$(PYTEST) -m soak tests -q -s || [ $$? -eq 5 ]

# Throughput, latency, claim cost, recovery and memory against pgbench floors;
# about 7 minutes. BENCH_DATABASE_URL picks the server; see docs/backend/BENCHMARKS.md.
bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(TOOLS) build *.egg-info .pytest_cache .hypothesis

# The container image, on the local base image where no registry is reachable
# (deploy/docker/base/README.md); pip in the build needs the host network.
BASE_IMAGE ?= mobvibe/python-base:bookworm
IMAGE ?= mobvibe/queue:latest

image:
	bash deploy/docker/base/make-base-image.sh
	docker build --network host --force-rm --build-arg BASE=$(BASE_IMAGE) \
	    -f deploy/docker/Dockerfile -t $(IMAGE) .

# The pods' seccomp profile is the runtime's default with the sandbox's rule
# (deploy/kubernetes/seccomp/make_profile.py); the default comes from Debian's
# golang-github-docker-docker-dev, of which only the one file is unpacked here.
SECCOMP_DEFAULT := $(TOOLS)/seccomp-default.json
$(SECCOMP_DEFAULT):
	@mkdir -p $(TOOLS)/deb-seccomp
	@( cd $(TOOLS)/deb-seccomp && (apt-get download golang-github-docker-docker-dev >/dev/null 2>&1 || \
	   (apt-get update >/dev/null 2>&1 && apt-get download golang-github-docker-docker-dev >/dev/null 2>&1)) && \
	   dpkg-deb -x golang-github-docker-docker-dev_*.deb root && \
	   cp root/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json ../seccomp-default.json ) || \
	   echo "Debian's default seccomp profile unavailable: the check of ours against it will be skipped"
	@rm -rf $(TOOLS)/deb-seccomp

# apparmor_parser checks the AppArmor profile of the supervisor's pods (it compiles
# it, loading nothing): Debian's, unpacked with the includes it needs.
APPARMOR := $(TOOLS)/apparmor
$(APPARMOR):
	@mkdir -p $(TOOLS)/deb-apparmor
	@( cd $(TOOLS)/deb-apparmor && (apt-get download apparmor >/dev/null 2>&1 || \
	   (apt-get update >/dev/null 2>&1 && apt-get download apparmor >/dev/null 2>&1)) && \
	   dpkg-deb -x apparmor_*.deb root && mkdir -p ../apparmor && \
	   cp root/sbin/apparmor_parser ../apparmor/ && cp -r root/etc/apparmor.d ../apparmor/ ) || \
	   echo "apparmor_parser unavailable: the check of the AppArmor profile will be skipped"
	@rm -rf $(TOOLS)/deb-apparmor

seccomp-profile: $(SECCOMP_DEFAULT)
	$(PY) deploy/kubernetes/seccomp/make_profile.py $(SECCOMP_DEFAULT) > deploy/kubernetes/seccomp/mobvibe-sandbox.json

# Offline checks of deploy/: manifests, KEDA objects, Dockerfile, compose, alert rules,
# the seccomp profile.
deploy-check: venv $(PROMTOOL) $(SECCOMP_DEFAULT) $(APPARMOR)
	$(BIN)/kubernetes-validate --strict -k 1.30.0 $$(grep -L 'keda.sh/' deploy/kubernetes/*.yaml | grep -v kustomization)
	$(BIN)/hadolint deploy/docker/Dockerfile
	PATH="$(CURDIR)/$(TOOLS):$$PATH" $(PYTEST) tests/deploy -q -m "not docker"
