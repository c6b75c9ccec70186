# The two set-up commands of the README: `make demo` and `make test`.
# Each installs what it needs on a fresh machine (virtualenv, pip packages, Debian packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := chromium prometheus

.PHONY: demo test system-packages venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

system-packages:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi

demo: venv system-packages
	$(BIN)/callstream demo

# Two pytest workers, one test module each at a time (module fixtures stay whole): most of the suite waits on
# brokers, workers and timers, so two share two cores (one process: 15-20 min on this 2-core box). Three
# workers were a minute faster but crowded the timing-sensitive tests.
test: venv system-packages
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) var .pytest_cache
