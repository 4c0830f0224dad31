# `make demo` and `make test` each create .venv when it is missing, install mlkd into it, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mlkd-installed
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test install data bench clean

install: $(STAMP)

# torch/torchvision are pinned first: on our CI machines pip takes these builds from local disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

# The embedded default data set reads Fashion-MNIST from Debian's package when it is there.
data:
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && apt-get install -y dataset-fashion-mnist >/dev/null 2>&1) || \
		echo "note: could not install dataset-fashion-mnist; mlkd will look in --data-root or download"; \
	fi

demo: install data
	$(PY) -m mlkd demo

test: install data
	$(PY) -m pytest -q tests

bench: install
	$(PY) benchmarks/loss_speed.py

clean:
	rm -rf $(VENV) build *.egg-info runs
