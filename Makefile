# One virtual environment holds the service, training and test tools.
VENV    ?= .venv
PY      := $(VENV)/bin/python
DATA    ?= ../shared/data
BUNDLE  ?= bundles/default
HOST    ?= 127.0.0.1
PORT    ?= 8000
# tcmalloc, when installed (Debian libtcmalloc-minimal4), for training: glibc malloc
# page-faults on large activation tensors (see README, Training speed).
TCMALLOC := $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4))
TRAIN_ENV := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC))

# Debian packages the tests start for real: redis-server (throwaway caches), prometheus
# (promtool and a live scrape), nginx (the load balancer config); tcmalloc for training.
SYSTEM_PACKAGES := redis-server prometheus nginx libtcmalloc-minimal4

.PHONY: install system-deps serve bundle test lint bench clean

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
	  $(TRAIN_ENV) $(VENV)/bin/ubs-embed train --data $(DATA)/ml-100k --format movielens --out $(BUNDLE); \
	else \
	  echo "no real data at $(DATA)/ml-100k: training on the synthetic generator (not a quality model)"; \
	  $(TRAIN_ENV) $(VENV)/bin/ubs-embed train --format synthetic --out $(BUNDLE); \
	fi

# The main job: the service answering /embed on http://$(HOST):$(PORT).
serve: bundle
	$(VENV)/bin/ubs-embed serve --bundle $(BUNDLE) --host $(HOST) --port $(PORT)

# Installs the Debian packages above when one of their commands is missing (needs root).
system-deps:
	@for c in redis-server promtool prometheus nginx; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ] || [ -z "$(TCMALLOC)" ]; then \
	  echo "installing $(SYSTEM_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES) >/dev/null; \
	fi

test: install system-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: bundle
	$(VENV)/bin/ubs-embed bench --bundle $(BUNDLE) --data $(DATA) --docs docs/bench

clean:
	rm -rf $(VENV) bundles
