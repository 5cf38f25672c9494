# One way to start everything; CI (.ci/run) calls `make test` like a newcomer would.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint fmt bench mixin container system-deps venv lab-up lab-down clean

# The Python environment, rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# Debian packages of the lab (Samba AD DC, chrony, libfaketime, Prometheus); installs only what is missing.
system-deps:
	scripts/install-system-deps.sh

# The exporter against the built-in lab, on http://127.0.0.1:9817/ until Ctrl-C.
demo: system-deps venv
	$(PY) -m tests.lab demo

# Lint, types, then every test (unit and against the real lab).
test: system-deps venv lint
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

fmt: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Benchmarks (not tests): each prints ratios against a baseline measured in the same run.
bench: system-deps venv
	$(PY) bench/clock_fanout.py
	$(PY) bench/kerberos_fanout.py
	$(PY) bench/duplicate_scan.py
	$(PY) bench/protocol_log.py
	$(PY) bench/replication.py
	$(PY) bench/service_tickets.py

# Regenerate the monitoring mixin (alerts, recording rules, dashboards) after changing dashboards/.
mixin: venv
	$(PY) -m dashboards

# The container image (deploy/container/Containerfile) with the first engine that answers.
IMAGE ?= exchange-auth-exporter:dev
ENGINE ?= $(shell for e in podman docker; do $$e info >/dev/null 2>&1 && { echo $$e; break; }; done)
container:
	@if [ -z "$(ENGINE)" ]; then \
		echo "container: no podman or docker that answers \`info\` here: nothing built" >&2; exit 1; fi
	$(ENGINE) build -f deploy/container/Containerfile -t $(IMAGE) .

lab-up: system-deps venv
	$(PY) -m tests.lab up

lab-down: venv
	$(PY) -m tests.lab down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
