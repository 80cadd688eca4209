# kb: the README's two commands are `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench clean system-packages

$(STAMP): pyproject.toml requirements.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -d $(VENV) || uv venv --quiet --python $(PYTHON) $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --compile-bytecode -r requirements.lock
	VIRTUAL_ENV=$(VENV) uv pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/kb serve --host $${KB_HOST:-127.0.0.1} --port $${KB_PORT:-8080}

# Debian packages some tests drive for real (a browser, OCR): installed once when missing and we are root.
system-packages:
	@grep -v '^#' tests/support/system-packages.txt | while read -r pkg probe; do \
	  [ -z "$$pkg" ] && continue; [ -e "$$probe" ] && continue; \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian package $$pkg (needed by the tests)"; \
	    (apt-get update -qq || true) >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$$pkg" >/dev/null; \
	  else echo "warning: Debian package $$pkg is missing and we are not root; tests that need it will fail"; fi; \
	done

test: $(STAMP) system-packages
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check kb stores writers api tests

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m kb.benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
