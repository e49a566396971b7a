# Two entry points: `make demo` (install, fetch real music, build a catalogue, find an
# altered copy) and `make test` (install, lint, run the test suite, build the docs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint docs browser strace bench bench-core clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m benchmarks.demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint browser strace
	$(BIN)/python -m pytest -q
	$(MAKE) docs

# The docs site (MkDocs): pages in docs/, API reference from the docstrings, into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The review page is tested in a real headless Chromium: install Debian's when we can (root with
# apt-get); without it that one test is skipped, and this says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the review-page test"; \
	    apt-get install -y -q chromium >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
	      || echo "could not install chromium: the review-page browser test will be skipped"; \
	  else \
	    echo "no chromium (Debian: apt-get install chromium): the review-page test will be skipped"; \
	  fi; }

# Crash tests kill writes at each durability point through strace's syscall injection:
# install Debian's when we can; without it those tests are skipped, and this says so.
strace:
	@command -v strace >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's strace for the crash tests"; \
	    apt-get install -y -q strace >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q strace >/dev/null 2>&1; } \
	      || echo "could not install strace: the crash tests will be skipped"; \
	  else \
	    echo "no strace (Debian: apt-get install strace): the crash tests will be skipped"; \
	  fi; }

# The benchmark suite: SIZE=quick (under 20 minutes here) or SIZE=full.
SIZE ?= quick
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.corpus install --suite-tools
	$(BIN)/python -m benchmarks.suite --size $(SIZE)

# The core engine benchmark alone (its calibration split refits the shipped score model
# with --calibrate).
bench-core: $(STAMP)
	$(BIN)/python -m benchmarks.corpus install
	$(BIN)/python -m benchmarks.run_benchmark --size quick

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache site build/docs-python
