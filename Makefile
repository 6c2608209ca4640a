# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint clean images bench bench-quick bench-peers

setup:
	@./scripts/setup.sh

test: setup bench-peers
	$(PY) -m ruff check .
	$(PY) -m pytest

demo: setup
	@./scripts/demo.sh

# Container image localhost/detour:dev (init + sidecar), see deploy/README.md.
images: setup
	@./deploy/build.sh

# Benchmarks (bench/README.md): Detour vs Envoy, HAProxy, pproxy, mitmproxy and no proxy.
# The peers go into build/bench-venv and Debian packages, never into the product's venv.
bench-peers:
	@/usr/bin/python3 bench/install.py

bench: setup bench-peers
	$(PY) bench/run.py $(BENCH_ARGS)

# Every scenario once, briefly; marks (does not refuse) a busy machine; exits non-zero only
# when the harness breaks (a peer that does not start, a scenario without a number).
bench-quick: setup bench-peers
	$(PY) bench/run.py --quick --allow-busy --out build/bench-quick $(BENCH_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
