PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: install test demo demo-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's chromium opens the demo report in a test (skipped, with its reason, where it cannot be installed).
$(CHROMIUM):
	-DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)

test: install $(CHROMIUM)
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/ldm demo --out runs/demo

demo-fast: install
	$(BIN)/ldm demo --fast --out runs/demo-fast

bench: install
	$(BIN)/python bench/data.py
	$(BIN)/python bench/autoencoder.py
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/unet_train.py
	$(BIN)/python bench/latent_vs_pixel.py
	$(BIN)/python bench/demo_steps.py
	$(BIN)/python bench/allocator.py

clean:
	rm -rf $(VENV) runs build *.egg-info
