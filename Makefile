# testbed: `make reproduce` and `make test` set everything up themselves (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup apt venv image netem-image spice-fix build-qemu-fix test reproduce lint check bench clean-labs

setup: apt venv image netem-image spice-fix build-qemu-fix

apt:
	@tools/apt-setup.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)
	@echo "venv: installed testbed and its test extras into $(VENV)"

venv: $(STAMP)
	@echo "venv: $(VENV) is up to date"

image: venv
	@$(BIN)/testbed guest build || { apt-get update -q && $(BIN)/testbed guest build; }

# The netem VM (Debian's cloud kernel has sch_netem; this machine's has not): the kernel
# shaping engine's tests run in it (tests/test_netem_vm.py). Cached by content hash.
netem-image: venv
	@$(BIN)/python -m testbed.virt.netem_vm

# spice-server 0.15.1 from Debian's source with the bug 884631 patches
# (testbed/shipped/patches/spice-server), for hosts with `spice_server: patched`;
# ~25 s on 2 cores, "already built" after. testbed.virt.builds says how.
spice-fix: apt venv
	@$(BIN)/python -m testbed.virt.builds

# The no-freeze variant: QEMU 7.2 from Debian's source with testbed/shipped/patches/qemu
# (it holds a migration that could complete while a SPICE client is still connecting),
# built on the patched spice-server above, for hosts with `spice_server: patched-qemu`.
# In setup (it fits CI's budget: 196-250 s on 2 cores, apt-get source 24 MB, configure
# 12 s, ninja 1246 steps; +25 s when the spice-server build is new), so `make test` runs
# the server-qemu cells on a fresh machine too; "already built" after (3 s).
# testbed.virt.qemu_build says how; playbooks/bug-884631-qemu.yaml runs on it.
build-qemu-fix: apt venv
	@$(BIN)/python -m testbed.virt.qemu_build

test: setup
	$(BIN)/pytest -v -rs

reproduce: setup
	tools/reproduce.sh

lint: venv
	$(BIN)/ruff check testbed tests bench tools
	$(BIN)/mypy

# A minute's feedback: lint, types and every test that needs no lab (not marked `lab`:
# no lab, namespace, sshd or VM), on two workers. `make test` stays the full suite.
check: lint
	$(BIN)/pytest -q -m "not lab" -n 2

bench: setup
	$(BIN)/python bench/lab.py

clean-labs: venv
	$(BIN)/testbed down --all
