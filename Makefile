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
DEMO_SIMFLAGS ?=     # e.g. --compress (Rice tile-compressed raw files, 2.2x smaller)
DEMO_REDUCEFLAGS ?=  # e.g. --prune-pixtables
DEMO_RAW  := $(DEMO_DIR)/raw-ifus$(DEMO_IFUS)-seed$(DEMO_SEED)
DEMO_OUT  := $(DEMO_DIR)/reduced-ifus$(DEMO_IFUS)-seed$(DEMO_SEED)

.PHONY: setup system run full-night test lint bench images clean

setup: system $(STAMP)

# the real ESO pipeline; promtool (Debian's prometheus) for the alert rules' tests; Chromium
# and its driver for the QC report's test; podman (runc; buildah, debootstrap for the images)
# for the container tests
system:
	@if ! command -v esorex >/dev/null || ! esorex --recipes 2>/dev/null | grep -q muse_bias \
	    || ! command -v promtool >/dev/null || ! command -v chromedriver >/dev/null \
	    || ! command -v podman >/dev/null || ! command -v runc >/dev/null \
	    || ! command -v debootstrap >/dev/null; then \
		echo "installing esorex, cpl-plugin-muse, prometheus, chromium, podman (Debian)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq esorex cpl-plugin-muse \
			prometheus chromium chromium-driver podman buildah runc debootstrap; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[serve,test]'
	touch $@

# simulate a night (once per IFU set and seed), reduce it, and write the QC report (also when
# a job failed: the report shows why)
run: setup
	@if [ ! -f $(DEMO_RAW)/truth.json ]; then \
		$(BIN)/musedrp simulate $(DEMO_RAW) --ifus $(DEMO_IFUS) --seed $(DEMO_SEED) $(DEMO_SIMFLAGS); fi
	$(BIN)/musedrp reduce $(DEMO_RAW) -o $(DEMO_OUT) $(DEMO_REDUCEFLAGS); status=$$?; \
		$(BIN)/musedrp report $(DEMO_OUT) && exit $$status

# the whole night, all 24 IFUs, to the combined cube: 27 GB of compressed raw frames + at most
# 48 GB of products at once (measured; pixel tables are pruned once their readers succeeded)
full-night:
	$(MAKE) run DEMO_IFUS=1-24 DEMO_SIMFLAGS=--compress DEMO_REDUCEFLAGS=--prune-pixtables

test: setup
	$(BIN)/ruff check shared services tests benchmarks
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check shared services tests benchmarks

# each writes benchmarks/results/<name>.{md,json,png}; together about 70 min on 2 cores
BENCHMARKS ?= overhead pinning fanout memory_models ingest_planning prompt_latency \
	broker_throughput
bench: setup
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done

# container images musedrp-base and musedrp-<service>, tagged TAG: docker where a daemon
# runs, else podman (a Debian base made with debootstrap when no registry answers); see
# docker/images.sh and docs/operations.md
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
GIT_SHA  := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
SERVICES := ingest planner bias flat wavecal lsf twilight scibasic standard sky scipost align combine stitch
TAG      ?= $(VERSION)
images: system
	docker/images.sh $(VERSION) $(GIT_SHA) $(TAG) $(SERVICES)

clean:
	rm -rf $(DEMO_DIR)
