# Two commands do all set-up: `make serve` and `make test`. Both create .venv on first use, with
# the exact versions pinned in uv.lock: `make serve` installs what the server needs to run,
# `make test` adds the dev tools (the `dev` extra). uv itself lives in .tools, outside the
# environment it manages; `make lock` refreshes uv.lock after a dependency change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV := .tools/bin/uv
SYNC := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON=$(PYTHON) $(UV) sync --frozen --quiet \
	--config-setting editable_mode=strict --reinstall-package callsight --compile-bytecode
# Bytecode is compiled at install, for the packages (above) and callsight's link tree (below):
# with PYTHONDONTWRITEBYTECODE set (as on the CI machines) nothing is ever cached otherwise, and
# every server start, decode worker and CLI call compiled pandas, grpc and the rest again (a
# server's imports 2.6-3.4 s instead of 0.85 s; SIGKILL to SERVING 4.8 s instead of 2.2 s).
COMPILE := if [ -d build ]; then $(BIN)/python -m compileall -q -j0 build; fi
# The strict editable install links each file into build/, so a new or removed module needs a
# re-install: the stamps cover pyproject.toml, uv.lock and the list of installed files.
INSTALLED := $(shell (cat pyproject.toml uv.lock; find proto/callsight server pipeline storage \
	loadtest -name '*.py' -o -name '*.pyi' -o -name '*.sql' -o -name py.typed | sort) \
	| sha1sum | cut -c1-12)
STAMP := $(VENV)/.runtime-$(INSTALLED)
DEV_STAMP := $(VENV)/.dev-$(INSTALLED)
# The buf CLI and the Node reference agent's packages, pinned in its package-lock.json (npm).
NODE_AGENT := loadtest/node_agent
NODE_STAMP := $(NODE_AGENT)/node_modules/.installed
BUF := $(NODE_AGENT)/node_modules/.bin/buf
# The contract devices in the field were built from: `buf breaking` fails on any change that
# would break them. Move it to the release's commit when a new contract ships.
RELEASED_CONTRACT := 462bb6f742d1b286563603d0d21de0cb99410922

.PHONY: serve test venv lint typecheck layers proto proto-check contract pytest bench lock clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Runtime only; --inexact keeps dev tools a `make test` installed.
$(STAMP): | $(UV)
	$(SYNC) --inexact
	$(COMPILE)
	rm -f $(VENV)/.runtime-* && touch $@

$(DEV_STAMP): | $(UV)
	$(SYNC) --extra dev
	$(COMPILE)
	rm -f $(VENV)/.runtime-* $(VENV)/.dev-* && touch $@ $(STAMP)

venv: $(DEV_STAMP)

serve: $(STAMP)
	$(BIN)/callsight serve

test: $(DEV_STAMP) lint typecheck layers proto-check contract pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# The import contracts in pyproject.toml: server -> pipeline -> storage -> core, never upwards.
layers: $(DEV_STAMP)
	$(BIN)/lint-imports

proto: $(DEV_STAMP)
	$(BIN)/python proto/generate.py

proto-check: $(DEV_STAMP)
	$(BIN)/python proto/generate.py --check

$(NODE_STAMP): $(NODE_AGENT)/package.json $(NODE_AGENT)/package-lock.json
	npm ci --prefix $(NODE_AGENT) --no-audit --no-fund --loglevel=error
	touch $@

# Lint rules and their few exceptions in proto/buf.yaml; the released contract is read from git.
contract: $(NODE_STAMP)
	$(BUF) lint proto
	$(BUF) breaking proto --against '.git#ref=$(RELEASED_CONTRACT),subdir=proto'

pytest: $(DEV_STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(DEV_STAMP)
	$(BIN)/python -m callsight.loadtest bench

lock: | $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) .tools data build $(NODE_AGENT)/node_modules
