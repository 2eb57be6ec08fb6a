# Two commands on a fresh machine:  `make app`  and  `make test`.
# Both create .venv, install requirements and system packages, and build the
# data caches; each step is skipped when nothing changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .make-stamps
PORT ?= 8501

.PHONY: app test data install system-deps bench screenshots report clean-data

$(STAMPS)/venv: requirements.txt pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMPS)/venv

$(STAMPS)/system: scripts/system_deps.sh
	@mkdir -p $(STAMPS)
	bash scripts/system_deps.sh
	@touch $@

system-deps: $(STAMPS)/system

# Builds the dataset caches it can (Fashion-MNIST, MNIST, the offline stand-ins).
data: install system-deps
	$(PY) -m rose_core data --all

app: data
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.headless true

test: data
	$(PY) -m pytest -q

# The peer libraries (BackPACK, Opacus, nngeometry) are benchmark-only: the `bench` extra of
# pyproject.toml, installed here and never by `make app` / `make test`.
$(STAMPS)/bench: pyproject.toml $(STAMPS)/venv
	$(PY) -m pip install -q -e '.[bench]'
	@touch $@

bench: data $(STAMPS)/bench
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_rose.py
	$(PY) benchmarks/bench_baselines.py
	$(PY) benchmarks/bench_peers.py
	$(PY) benchmarks/bench_peers.py --profile
	$(PY) benchmarks/bench_fit_peers.py
	$(PY) benchmarks/bench_fit_precision.py
	$(PY) benchmarks/bench_fit.py
	$(PY) benchmarks/bench_score.py

report: data
	$(PY) -m rose_core report

screenshots: data
	$(PY) scripts/screenshots.py

clean-data:
	rm -rf data
