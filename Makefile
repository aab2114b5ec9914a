# musedrp: `make run` reduces a simulated night, `make test` runs the whole test suite.
# Both install what is missing first (`make setup`, idempotent and fast when done).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

DEMO_IFUS ?= 1-3
DEMO_SEED ?= 1
DEMO_DIR  ?= demo
DEMO_RAW  := $(DEMO_DIR)/raw-ifus$(DEMO_IFUS)-seed$(DEMO_SEED)

.PHONY: setup esorex run test lint bench clean

setup: esorex $(STAMP)

# the real ESO pipeline, from Debian
esorex:
	@if ! command -v esorex >/dev/null || ! esorex --recipes 2>/dev/null | grep -q muse_bias; then \
		echo "installing esorex and cpl-plugin-muse (Debian)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq esorex cpl-plugin-muse; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# simulate a night (once per IFU set and seed), then reduce it
run: setup
	@if [ ! -f $(DEMO_RAW)/truth.json ]; then \
		$(BIN)/musedrp simulate $(DEMO_RAW) --ifus $(DEMO_IFUS) --seed $(DEMO_SEED); fi
	$(BIN)/musedrp reduce $(DEMO_RAW) -o $(DEMO_DIR)/reduced

test: setup
	$(BIN)/ruff check shared services tests benchmarks
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check shared services tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bias_flat.py

clean:
	rm -rf $(DEMO_DIR)
