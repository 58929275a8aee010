# The two set-up commands of the README: `make demo` and `make test` (ruff, then pytest); `make bench` measures;
# `make web` serves the browser app.
# Each creates the project's virtualenv (.venv) on first use and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench web clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build; an open range would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,training]'
	# The web app and its browser tests (`meddiffusion web`, Testing/test_web_browser.py). Optional: where they cannot
	# be installed the rest still runs, and the browser tests are reported as skipped with the reason.
	$(PY) -m pip install --quiet -e '.[web]' || echo "warning: the web extra did not install; the browser tests will be skipped" >&2
	# slicer-layer-dm's wheel pins slicer-core==5.11.*; its libraries load with the slicer-core the tests use (5.13),
	# so it goes in without that pin (with the pin pip would downgrade slicer-core and vtk for the whole suite).
	$(PY) -m pip install --quiet --no-deps slicer-layer-dm==2.0.0 || echo "warning: slicer-layer-dm did not install; the browser tests will be skipped" >&2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meddiffusion demo --out-dir out/demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# The browser app on http://127.0.0.1:8080/ (README: Web app); WEB_ARGS="--host 0.0.0.0" to serve others (token).
web: $(STAMP)
	$(VENV)/bin/meddiffusion web $(WEB_ARGS)

# The full benchmark (both scales, every precision, the bundled models end to end) into docs/bench/; BENCH_ARGS=--quick
# for the two-minute version.
bench: $(STAMP)
	$(VENV)/bin/meddiffusion bench --out-dir docs/bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) out
