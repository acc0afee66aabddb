# ScratchWatch developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SW := $(BIN)/scratchwatch

.PHONY: demo test setup setup-dev system-deps bench clean

# The lot-camera install: runtime only, no torch.
setup: $(VENV)/.runtime
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

# Everything: runtime + training extra + test tools + PostgreSQL driver.
setup-dev: $(VENV)/.dev
$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[train,test,postgres]'
	touch $@ $(VENV)/.runtime

# System packages the tests use: PostgreSQL's server binaries (the tests start their own
# throwaway cluster) and libGL for OpenCV. Installed only when missing.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libGL.so.1'; then \
		echo "installing postgresql and libgl1 (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql libgl1 >/dev/null; \
	fi

# Main job on embedded defaults: the shipped model, the committed demo clip, SQLite under ./data.
demo: setup
	$(SW) replay demo/intel_car-detection.mp4
	$(SW) incidents list

test: system-deps setup-dev
	$(BIN)/python -m pytest -q

bench: setup-dev
	$(BIN)/python bench/bench_replay.py throughput
	$(BIN)/python bench/bench_replay.py latency

clean:
	rm -rf $(VENV) data .pytest_cache
