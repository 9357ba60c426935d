# One virtual environment holds the service, training and test tools.
VENV    ?= .venv
PY      := $(VENV)/bin/python
DATA    ?= ../shared/data
BUNDLE  ?= bundles/default
HOST    ?= 127.0.0.1
PORT    ?= 8000

.PHONY: install serve bundle test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

# Train a bundle on ml-100k when the shared data is there, else on synthetic logs.
bundle: $(BUNDLE)/model_version

$(BUNDLE)/model_version: | install
	@if [ -f $(DATA)/ml-100k/u.data ]; then \
	  echo "training on MovieLens 100K ($(DATA)/ml-100k)"; \
	  $(VENV)/bin/ubs-embed train --data $(DATA)/ml-100k --format movielens --out $(BUNDLE); \
	else \
	  echo "no real data at $(DATA)/ml-100k: training on the synthetic generator (not a quality model)"; \
	  $(VENV)/bin/ubs-embed train --format synthetic --out $(BUNDLE); \
	fi

# The main job: the service answering /embed on http://$(HOST):$(PORT).
serve: bundle
	$(VENV)/bin/ubs-embed serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: bundle
	$(VENV)/bin/ubs-embed bench --bundle $(BUNDLE) --data $(DATA)

clean:
	rm -rf $(VENV) bundles
