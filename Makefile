# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install browser clean

$(BIN)/avemo: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/avemo

install: $(BIN)/avemo

demo: install
	$(BIN)/avemo demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The app's browser tests drive Debian's Chromium with its chromedriver (tests/test_app_browser.py).
# Installed with apt-get when missing (sudo only when not root); without apt-get this only warns, and
# those tests then fail naming the missing program (AVEMO_SKIP_BROWSER=1 skips them instead).
BROWSER_PROGRAMS := chromium chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser:
	@missing=""; for p in $(BROWSER_PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium chromium-driver (missing:$$missing)"; \
		$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
		|| echo "warning: could not install chromium chromium-driver: the browser tests will fail" >&2; \
	else \
		echo "warning: no apt-get here: install Chromium and chromedriver ($$missing missing); the browser tests will fail" >&2; \
	fi

# $(BIN)/pytest, not `python -m pytest`: -m would put the repository root on sys.path, where the
# folders could be imported by their bare names (`training`) beside their real ones (`avemo.training`).
test: install browser
	$(BIN)/pytest -q

clean:
	rm -rf data cache runs model_repository/emotion
