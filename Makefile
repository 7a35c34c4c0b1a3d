# The two entry points on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow test-faults-long lint bench-detection bench-perf clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the CPU build on this machine's disk instead of a multi-GB CUDA download.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sentinel demo

lint: $(STAMP)
	$(BIN)/ruff check $(wildcard detectors storage monitor tests bench)
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/pytest -q -ra -m "not slow"

test-slow: $(STAMP)
	$(BIN)/pytest -q -ra -m slow

# The fault and soak tests at full length: 60 s outages, 20 SIGKILL runs, a 10-minute soak (about 25 min).
test-faults-long: $(STAMP)
	SENTINEL_LONG_FAULTS=1 $(BIN)/pytest -q -ra tests/test_faults.py tests/test_soak.py

bench-detection: $(STAMP)
	$(BIN)/python -m bench.detection_quality
	$(BIN)/python -m bench.security_attacks
	$(BIN)/python -m bench.security_poisoning

bench-perf: $(STAMP)
	$(BIN)/python -m bench.perf_ingest $(if $(QUICK),--quick)
	$(BIN)/python -m bench.perf_detectors $(if $(QUICK),--quick,--features 16 32 64)
	$(BIN)/python -m bench.perf_latency $(if $(QUICK),--quick)
	$(BIN)/python -m bench.perf_memory $(if $(QUICK),--quick)
	$(BIN)/python -m bench.perf_drift $(if $(QUICK),--quick,--ablation)
	$(BIN)/python -m bench.perf_scaling $(if $(QUICK),--quick --plot $(or $(TMPDIR),/tmp)/sentinel-scaling-quick.png)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
