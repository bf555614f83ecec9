# Two commands set up a fresh machine: `make demo` (main job on the embedded demo) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
OVERLAY := .overlay
ENV := source tools/env.sh &&
PYTEST_ARGS ?=
# pytorch3d's source (no wheel on the package index fits our torch): built once, the wheel cached in ~/.cache.
# The first that exists: beside the checkout (../shared, as on the development machines), or /work/shared.
PYTORCH3D_SRC ?= $(firstword $(wildcard ../shared/vendor/pytorch3d-0.7.9-src.tar.gz /work/shared/vendor/pytorch3d-0.7.9-src.tar.gz) ../shared/vendor/pytorch3d-0.7.9-src.tar.gz)

.PHONY: setup test demo bench colcon clean pytorch3d

setup: $(VENV)/.deps-stamp $(OVERLAY)/.stamp

# Debian packages: OSMesa for the offscreen reference renderer; cmake and g++ build the message overlay.
.apt-stamp:
	@missing=""; for p in libosmesa6 cmake g++; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt: installing$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; fi
	@touch $@

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip wheel setuptools

$(VENV)/.deps-stamp: requirements.txt requirements-dev.txt setup.py .apt-stamp | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(OVERLAY)/.stamp: $(VENV)/.deps-stamp tools/build_overlay.sh $(wildcard tools/ros_interfaces/*/msg/*.msg)
	tools/build_overlay.sh $(VENV) $(OVERLAY)
	@touch $@

# Optional rendering backend: build pytorch3d into a cached wheel (first time ~12+ min on 2 cores) and install it.
pytorch3d: $(VENV)/.deps-stamp
	MAX_JOBS=$${MAX_JOBS:-2} tools/build_pytorch3d.sh $(VENV) $(PYTORCH3D_SRC)

test: setup
	$(ENV) python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(ENV) python -m pose6d_ros.demo

bench: setup
	$(ENV) for b in benchmarks/pnp.py benchmarks/render.py benchmarks/latency.py; do python $$b; done

# Build the package the way a robot does (colcon in a venv of its own), into build/ and install/.
colcon: setup
	@[ -x .colcon-venv/bin/colcon ] || (python3 -m venv .colcon-venv && .colcon-venv/bin/pip install -q colcon-common-extensions==0.3.0)
	$(ENV) .colcon-venv/bin/colcon --log-base log build --base-paths . --build-base build --install-base install

clean:
	rm -rf build install log .pytest_cache
