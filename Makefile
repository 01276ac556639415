# Two commands do all set-up: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The strict editable install links each file into build/, so a new or removed module needs a
# re-install: the stamp covers pyproject.toml and the list of installed files.
INSTALLED := $(shell (cat pyproject.toml; find proto/callsight server pipeline storage loadtest \
	-name '*.py' -o -name '*.pyi' -o -name '*.sql' -o -name py.typed | sort) | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(INSTALLED)

.PHONY: serve test lint typecheck layers proto proto-check pytest bench clean

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

serve: $(STAMP)
	$(BIN)/callsight serve

test: $(STAMP) lint typecheck layers proto-check pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The import contracts in pyproject.toml: server -> pipeline -> storage -> core, never upwards.
layers: $(STAMP)
	$(BIN)/lint-imports

proto: $(STAMP)
	$(BIN)/python proto/generate.py

proto-check: $(STAMP)
	$(BIN)/python proto/generate.py --check

pytest: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m callsight.loadtest bench

clean:
	rm -rf $(VENV) data build
