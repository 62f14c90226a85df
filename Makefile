PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/ldm data build digits --out runs/demo/data/digits
	$(BIN)/ldm data build digits --split val --out runs/demo/data/digits-val
	$(BIN)/ldm data build shapes --out runs/demo/data/shapes --count 2000
	$(BIN)/ldm data info runs/demo/data/shapes
	test -f runs/demo/classifier/model/model.safetensors || \
		$(BIN)/ldm train-classifier runs/demo/data/digits --recipe recipes/classifier-digits.toml --out runs/demo/classifier

bench: install
	$(BIN)/python bench/data_throughput.py
	$(BIN)/python bench/sampling.py

clean:
	rm -rf $(VENV) runs build *.egg-info
