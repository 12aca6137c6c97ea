# edgefleet: `make demo` runs the tour, `make test` passes the suite. Both set themselves up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check bench deb clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.server: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[server]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.server

demo: $(VENV)/.server
	$(BIN)/fleet-server demo

test: $(VENV)/.dev
	@bash scripts/ensure-mosquitto
	$(BIN)/python -m pytest -q -p no:cacheprovider

check: $(VENV)/.dev
	$(BIN)/ruff check edge_agent fleet_server converters tests bench
	$(BIN)/mypy edge_agent fleet_server converters

bench: $(VENV)/.dev
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

deb:  ## the agent's .deb into dist/ (ARCH=arm64 builds for arm64 from amd64)
	bash packaging/build-deb.sh --out dist $(if $(ARCH),--arch $(ARCH))

clean:
	rm -rf $(VENV) demo-data build *.egg-info
