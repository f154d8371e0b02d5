# qkdlink: set-up and the two jobs of the README. Everything installs from PyPI into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   := build/demo

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[test]'
	touch $@

# The main job: a simulated QKD link from photons to identical secret keys; then privacy amplification of a
# fresh random key by the host code and by the gateware core in simulation, which must agree bit for bit.
demo: setup
	$(BIN)/qkd demo
	$(BIN)/qkd random 4096 --output $(DEMO)/key.bin
	$(BIN)/qkd random 6143 --output $(DEMO)/seed.bin
	$(BIN)/qkd pa $(DEMO)/key.bin --seed $(DEMO)/seed.bin --output-bits 2048 --output $(DEMO)/hashed.bin \
		--gateware --check

# The whole test suite: host models, gateware in the Amaranth simulator and in cocotb on Verilator, bitstreams.
test: setup
	$(BIN)/python -m pytest --numprocesses 2 --dist worksteal --durations 25

clean:
	rm -rf build .pytest_cache
