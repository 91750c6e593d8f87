# `make demo` and `make test` work on a fresh clone: they create .venv and install into it.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
WEB := src/gigaface/service/web
OSD := $(WEB)/node_modules/openseadragon/package.json
# apt-get needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,ray]'
	touch $(STAMP)

# The viewer's OpenSeadragon and /docs' Swagger UI, from the npm registry at the versions the
# lock file names. No install scripts: swagger-ui-dist pulls in @scarf/scarf, whose only
# script reports the install to a third party.
$(OSD): $(WEB)/package.json $(WEB)/package-lock.json
	npm ci --prefix $(WEB) --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(OSD)

setup: $(STAMP) $(OSD)

# Debian's Chromium, which the viewer's browser tests drive through Playwright.
browser:
	@command -v chromium >/dev/null || $(SUDO) apt-get install -y -q chromium \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

demo: setup
	$(BIN)/gigaface demo --out demo-output

# Two test processes (pytest-xdist), a test module to each at a time so that its module-scoped
# fixtures (scanned libraries, servers, a Ray cluster) are made once; TEST_JOBS=1 runs serially.
TEST_JOBS ?= 2
PYTEST := $(BIN)/python -m pytest -q $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadscope)

test: setup browser
	$(PYTEST)

test-all: setup browser
	$(PYTEST) -m ''

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf demo-output bench/out .pytest_cache test-artifacts
