# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-e2e test-vm demo lint clean images bench bench-quick bench-peers bench-guard bench-xds soak

setup:
	@./scripts/setup.sh

test: setup bench-peers
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

# The lab's end-to-end tests alone (init's rules, the sidecar, iptables and eBPF capture);
# E2E adds pytest arguments. Inside its VM, make test-vm runs the slice marked `vm` with
# iptables capture only: E2E='-m vm -k "not ebpf"' (see vagrant/Vagrantfile).
E2E ?=
test-e2e: setup
	$(PY) -m pytest tests/e2e/init tests/e2e/proxy $(E2E)

# The reliability suite (tests/reliability, also part of make test) run longer: each load and
# fuzz case scales with SOAK_SECONDS; the figures table is printed at the end and written to
# build/reliability/figures.json.
SOAK_SECONDS ?= 600
soak: setup
	DETOUR_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest tests/reliability

# A Debian 12 VM under Vagrant + libvirt (TCG, isolated, offline box): make setup, make demo
# and make test-e2e inside it, then destroyed. See vagrant/README.md.
test-vm: setup
	@./vagrant/test-vm.sh

demo: setup
	@./scripts/demo.sh $(DEMO)

# Container image localhost/detour:dev (init + sidecar), see deploy/README.md.
images: setup
	@./deploy/build.sh

# Benchmarks (bench/README.md): Detour vs Envoy, HAProxy, pproxy, mitmproxy and no proxy.
# The peers go into build/bench-venv and Debian packages, never into the product's venv.
bench-peers:
	@/usr/bin/python3 bench/install.py

bench: setup bench-peers
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/xds_scale.py $(XDS_ARGS)

# xDS at scale alone: one control plane, 10/50/100 Detour sidecars and 10 Envoys, 1,000
# services / 10,000 endpoints (about 30 minutes on two cores); XDS_ARGS adds options.
bench-xds: setup bench-peers
	$(PY) bench/xds_scale.py $(XDS_ARGS)

# Every scenario once, briefly; marks (does not refuse) a busy machine; exits non-zero only
# when the harness breaks (a peer that does not start, a scenario without a number).
bench-quick: setup bench-peers
	$(PY) bench/run.py --quick --allow-busy --out build/bench-quick $(BENCH_ARGS)
	$(PY) bench/xds_scale.py --quick --out build/bench-quick

# The CPU regression guard (CI): instructions per request under callgrind for L4, HTTP/1.1
# and HTTP/2, each within 10% of bench/instruction_budget.json (about two minutes).
bench-guard: setup bench-peers
	$(PY) bench/guard.py $(GUARD_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
