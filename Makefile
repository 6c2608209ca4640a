# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint clean images

setup:
	@./scripts/setup.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

demo: setup
	@./scripts/demo.sh

# Container image localhost/detour:dev (init + sidecar), see deploy/README.md.
images: setup
	@./deploy/build.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
