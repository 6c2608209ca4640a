# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint clean

setup:
	@./scripts/setup.sh

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

demo: setup
	@./scripts/demo.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
