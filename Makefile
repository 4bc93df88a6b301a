# Two commands set up a fresh machine: `make test` and `make demo`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
MMTM   := $(VENV)/bin/mmtm
DEMO   ?= demo
SEEDS  ?= 0
# Debian packages the renderer needs (moderngl on a standalone EGL context, Mesa llvmpipe on CPU).
SYSTEM_PACKAGES := libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo system-packages clean

$(VENV)/.installed: pyproject.toml Makefile
	$(MAKE) system-packages
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the releases on this workplace's disk (see README).
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test,dali]"
	touch $@

system-packages:
	@dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); }

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

demo: $(VENV)/.installed
	$(MMTM) prep synthetic --out $(DEMO)/data
	$(MMTM) compare --data $(DEMO)/data --out $(DEMO)/compare --preset demo --seeds $(SEEDS)

clean:
	rm -rf $(VENV) $(DEMO)
