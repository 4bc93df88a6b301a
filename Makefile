# Two commands set up a fresh machine: `make test` and `make demo`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
MMTM   := $(VENV)/bin/mmtm
DEMO   ?= demo
SEEDS  ?= 0
JOBS   ?= 2
# Debian packages the renderer needs (moderngl on a standalone EGL context, Mesa llvmpipe on CPU).
SYSTEM_PACKAGES := libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo gpu-check system-packages clean

$(VENV)/.installed: pyproject.toml Makefile
	$(MAKE) system-packages
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the versions the tests run with (README, Install: other versions via pip).
	$(PY) -m pip install -q --no-compile "torch==2.14.1" "torchvision==0.29.1"
	# pip unpacks and byte-compiles on one core: torch's modules compile on the other while pip installs the rest,
	# then one pass compiles what is left: 47 s instead of 63 s here (2 cores).
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  { $(PY) -m compileall -q -j 1 "$$site" >/dev/null 2>&1 & }; \
	  $(PY) -m pip install -q --no-compile -e ".[test,dali]"; status=$$?; wait; [ $$status = 0 ] && \
	  { $(PY) -m compileall -q -j 0 "$$site" >/dev/null 2>&1 || true; }
	touch $@

system-packages:
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); }

# One pytest worker per core (pytest-xdist); each test process uses one torch thread (tests/conftest.py).
test: $(VENV)/.installed
	$(VENV)/bin/pytest -q -n auto

demo: $(VENV)/.installed
	$(MMTM) prep synthetic --out $(DEMO)/data
	$(MMTM) compare --data $(DEMO)/data --out $(DEMO)/compare --preset demo --seeds $(SEEDS) --baselines --jobs $(JOBS)

# The whole GPU acceptance, judged (benchmarks/gpu_check.py; it makes its dataset with PIL). Where $(PY) already
# imports torch and DALI (`make gpu-check PY=python3` on a GPU machine without network) nothing is installed;
# otherwise, with the default PY, the venv is made first.
GPU_DATA ?= .gpudata
GPU_CHECK_FLAGS ?=
gpu-check:
	@if $(PY) -c 'import torch, nvidia.dali' 2>/dev/null; then :; \
	elif [ "$(PY)" = "$(VENV)/bin/python" ]; then $(MAKE) $(VENV)/.installed; \
	else echo "error: $(PY) cannot import torch and nvidia.dali; benchmarks/README.md says how to bring them" >&2; \
	  exit 2; fi
	$(PY) benchmarks/gpu_check.py --data $(GPU_DATA) $(GPU_CHECK_FLAGS)

clean:
	rm -rf $(VENV) $(DEMO)
