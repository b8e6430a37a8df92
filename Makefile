# Two commands: `make up` runs the whole system, `make test` runs every check and test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: up test test-fast install peers system-deps check format lint types pytest compose-test soak clean

up: $(INSTALLED)
	$(BIN)/mlcanary up

test: $(INSTALLED) peers system-deps check pytest

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Peers the tests and benchmarks run beside ours, each in its own virtual environment (their pins
# are not ours): MLServer with its MLflow and scikit-learn runtimes (peers/mlserver), with the
# model libraries held to the versions in $(VENV) so both servers load the same artifacts.
MLSERVER_VENV ?= .venv-mlserver
MLSERVER_INSTALLED := $(MLSERVER_VENV)/.installed
MODEL_LIBRARIES := mlflow|mlflow-skinny|scikit-learn|numpy|pandas|scipy|skops|cloudpickle|xgboost-cpu|lightgbm
peers: $(MLSERVER_INSTALLED)

$(MLSERVER_INSTALLED): peers/mlserver/requirements.txt $(INSTALLED)
	$(PYTHON) -m venv $(MLSERVER_VENV)
	$(BIN)/python -m pip freeze | grep -iE '^($(MODEL_LIBRARIES))==' > $(MLSERVER_VENV)/constraints.txt
	$(MLSERVER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -r peers/mlserver/requirements.txt \
	  -r $(MLSERVER_VENV)/constraints.txt
	touch $@

# Debian tools the tests use: prometheus and promtool (package prometheus) scrape and lint
# /metrics and check the alert rules; docker-compose checks the compose file and, with podman
# (runc, CNI networking with DNS, debootstrap for the base image), runs the compose stack
# (tests/test_compose_stack.py); chromium and its chromedriver run the operator page's browser
# tests (tests/test_page.py). kubectl (with kustomize) builds the Kubernetes manifests; it
# is on the machine image. Each entry: a command or file, then the package that brings it.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TOOLS := prometheus:prometheus promtool:prometheus docker-compose:docker-compose \
	podman:podman runc:runc debootstrap:debootstrap \
	chromium:chromium chromedriver:chromium-driver \
	/usr/lib/cni/bridge:containernetworking-plugins \
	/usr/lib/cni/dnsname:golang-github-containernetworking-plugin-dnsname
system-deps:
	@missing="$$(for tool in $(DEBIAN_TOOLS); do command -v $${tool%%:*} >/dev/null || echo $${tool#*:}; done | sort -u)"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi
	@command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed for the manifest tests" >&2; exit 1; }

check: $(INSTALLED)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# Every test, its files spread over the cores (pytest-xdist; a file stays on one worker, so that
# its module fixtures start once). PYTEST_WORKERS=0 runs them in this one process.
PYTEST_WORKERS ?= auto
pytest: $(INSTALLED)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not alone"
	$(BIN)/pytest -m alone

# The quick loop while changing code: lint, types, and every test not marked slow.
test-fast: $(INSTALLED) check
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow"

# The soak and chaos run (bench/soak.py): `mlcanary up` for MINUTES under traffic, late labels,
# rollouts of models whose verdict is known and faults on a schedule; the report goes to
# docs/soak/. Root mounts a small tmpfs for the prediction log (its disk is filled on purpose).
MINUTES ?= 60
soak: $(INSTALLED)
	$(BIN)/python bench/soak.py --minutes $(MINUTES) --out docs/soak

# The compose stack alone: images built on podman, started by docker-compose, checked end to
# end (part of `make test` too; skipped there, saying why, where podman cannot run).
compose-test: $(INSTALLED) system-deps
	$(BIN)/pytest tests/test_compose_stack.py

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) .mypy_cache .pytest_cache .ruff_cache
