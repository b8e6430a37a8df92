# Two commands: `make up` runs the whole system, `make test` runs every check and test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: up test install system-deps check format lint types pytest clean

up: $(INSTALLED)
	$(BIN)/mlcanary up

test: $(INSTALLED) system-deps check pytest

install: $(INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Debian tools the tests use: prometheus and promtool (package prometheus) scrape and lint
# /metrics and check the alert rules; docker-compose checks the compose file (no engine needed).
# kubectl (with kustomize) builds the Kubernetes manifests; it is on the machine image.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TOOLS := prometheus:prometheus promtool:prometheus docker-compose:docker-compose
system-deps:
	@missing="$$(for tool in $(DEBIAN_TOOLS); do command -v $${tool%%:*} >/dev/null || echo $${tool#*:}; done | sort -u)"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; fi
	@command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is needed for the manifest tests" >&2; exit 1; }

check: $(INSTALLED)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

pytest: $(INSTALLED)
	$(BIN)/pytest

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
