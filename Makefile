# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= pinwork
SEED ?= 0

.PHONY: install demo test bench clean

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m pinworld.cli generate --workdir $(WORKDIR) --preset demo --seed $(SEED)
	$(PY) -m pinworld.cli summary --workdir $(WORKDIR)

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_response.py

clean:
	rm -rf $(WORKDIR)
