# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MENDLAB_PROFILE ?= ci
export TRANSFORMERS_VERBOSITY ?= error
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-unit test-notebooks test-browser lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: a CPU machine then never pulls the CUDA stack
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/mendlab demo

UNIT := $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not browser" tests
NBVAL := $(BIN)/python -m pytest -q -p no:python --nbval --nbval-current-env \
	--nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=900 notebooks
# JupyterLab + headless Chromium (/usr/bin/chromium, Debian's package) on notebooks/08_playground.ipynb
BROWSER := $(BIN)/python -m pytest -q -m browser tests/browser

test: setup
	# two workers of one thread each: the six zoo builds run two at a time (tests/conftest.py)
	$(UNIT)
	# the notebooks load the zoo from the cache; any model the unit tests did not build is built here, on the
	# terminal, not inside a kernel (nbval gives a cell 5 s to send output)
	$(BIN)/mendlab zoo build --all
	$(NBVAL)
	# the playground in a real browser, after the notebooks: the zoo and editors are cached by then
	$(BROWSER)

test-unit: setup
	$(UNIT)

test-notebooks: setup
	$(BIN)/mendlab zoo build --all
	$(NBVAL)

test-browser: setup
	$(BROWSER)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
