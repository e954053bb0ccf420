# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install system-deps clean

# Editable install in setuptools' strict mode: build/__editable__.avemo-*/avemo/ is a tree of links to the
# sources laid out as installed (avemo/contract/ -> contract/, ...), put on sys.path by a .pth file, which mypy,
# pyright and editors follow (the default mode's import hook is invisible to them). A module added or removed
# reaches that tree only through a reinstall, so the install also depends on MODULE_LIST, the list of modules,
# rewritten only when the list changes (a folder's mtime would change on every save by rename, too).
MODULE_LIST := $(VENV)/.avemo-modules
MODULES := $(shell find avemo contract training export serving client -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort)
$(shell mkdir -p $(VENV) && printf '%s\n' $(MODULES) | cmp -s - $(MODULE_LIST) || printf '%s\n' $(MODULES) >$(MODULE_LIST))

$(BIN)/avemo: pyproject.toml $(MODULE_LIST)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=strict -e '.[dev]'
	touch $(BIN)/avemo

install: $(BIN)/avemo

demo: install
	$(BIN)/avemo demo

# The production image and its Kubernetes manifests are linted offline (no Docker, no cluster): hadolint, and
# kubernetes-validate against the schemas it bundles for K8S_VERSION (--strict: unknown fields are errors).
# K8S_VERSION: older than the tool's default (1.37) so that clusters a few releases behind accept the
# manifests (their newest field, startupProbe, is GA since 1.20). tests/test_deploy.py reads it from here.
K8S_VERSION := 1.33.0

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy  # the package (through the link tree), tests/, benchmarks/, docs/hooks/: [tool.mypy] in pyproject.toml
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --kubernetes-version $(K8S_VERSION) deploy/k8s/*.yaml
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site  # not -q: it hides the warnings --strict counts

# System packages the tests need, from Debian: Chromium with its chromedriver for the app's browser tests
# (tests/test_app_browser.py) and PostgreSQL for the search's shared Optuna storage
# (tests/test_search_postgres.py, which starts its own throw-away server). Whichever are missing are
# installed with apt-get (sudo only when not root); without apt-get this only warns, and those tests then
# fail naming the missing program (AVEMO_SKIP_BROWSER=1 / AVEMO_SKIP_POSTGRES=1 skip them instead).
# PostgreSQL counts as present when an initdb is in /usr/lib/postgresql/*/bin (Debian's place) or on PATH.
BROWSER_PROGRAMS := chromium chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The Triton Python-backend stub links the shared libpython of the venv's Python version; a Python built without
# --enable-shared (pyenv, uv's standalone builds) has none, Debian's libpython3.X package provides it.
export LIBPYTHON_CHECK := import sys; from avemo.serving.server import find_libpython; sys.exit(find_libpython() is None)

system-deps: install
	@missing=""; packages=""; \
	for p in $(BROWSER_PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then packages="chromium chromium-driver"; fi; \
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
		missing="$$missing initdb"; packages="$$packages postgresql"; \
	fi; \
	if [ "$$(uname -s)" = Linux ] && ! $(BIN)/python -c "$$LIBPYTHON_CHECK" >/dev/null 2>&1; then \
		tag=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		missing="$$missing libpython$$tag.so.1.0"; packages="$$packages libpython$$tag"; \
	fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	packages="$${packages# }"; \
	if command -v apt-get >/dev/null 2>&1; then \
		echo "installing $$packages (missing:$$missing)"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$packages \
		|| echo "warning: could not install $$packages: the tests needing them will fail" >&2; \
	else \
		echo "warning: no apt-get here: install $$packages ($$missing missing); the tests needing them will fail" >&2; \
	fi

# $(BIN)/pytest, not `python -m pytest`: -m would put the repository root on sys.path, where the
# folders could be imported by their bare names (`training`) beside their real ones (`avemo.training`).
test: install system-deps
	$(BIN)/pytest -q

clean:
	rm -rf data cache runs model_repository/emotion
