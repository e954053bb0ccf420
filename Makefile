# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint install clean

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

# $(BIN)/pytest, not `python -m pytest`: -m would put the repository root on sys.path, where the
# folders could be imported by their bare names (`training`) beside their real ones (`avemo.training`).
test: install
	$(BIN)/pytest -q

clean:
	rm -rf data cache runs model_repository/emotion
