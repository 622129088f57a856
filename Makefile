# Two commands set up everything: `make test` and `make report`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KEEP := $(VENV)/keep-torch.txt

.PHONY: test report bench bench-peers wheel-check browser clean

# Every extra and the test tools; a torch build already in the environment (CUDA or CPU) is kept:
# its version is a constraint, so no requirement of an extra can replace it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip freeze | grep -iE '^(torch|torchvision)==' > $(KEEP) || true
	$(BIN)/python -m pip install --quiet -c $(KEEP) -e '.[all,test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

report: $(STAMP)
	$(BIN)/python -m analysis main

bench: $(STAMP)
	$(BIN)/python -m analysis.bench overhead --out benchmarks/overhead.md

# The monitor against peer tools (the bench extra, installed here without replacing torch).
bench-peers: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(KEEP) -e '.[bench]'
	$(BIN)/python -m analysis.bench peers --out benchmarks/peers.md

# The wheel in a fresh virtual environment with its core dependencies from the package index
# (PyTorch included: minutes and a few GB, removed afterwards); runs the README's plain-loop example.
wheel-check: $(STAMP)
	$(BIN)/python tools/wheel_check.py

# Debian's Chromium for the report browser check (needs root; the test skips without it).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

clean:
	rm -rf runs reports/*.html reports/runs
