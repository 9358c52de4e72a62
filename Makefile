# smobility: set up, test, demo and benchmark.
#
# On a fresh Debian 12 machine, as root:
#   make test     system packages, the venv, then every test; last line "N passed, N failed"
#   make demo     the roaming demo in the lab
#   make bench    benchmarks, JSON results under bench/results/
#
# TESTS=tests.test_x make test   runs a subset (trial names).
#
# How twistd in the venv finds the plugin: the editable install alone does not
# put the checkout on sys.path (setuptools' import hook serves `import
# smobility` only), and Twisted's plugin discovery looks for twisted/plugins
# directories on sys.path.  So `make venv` also writes smobility-checkout.pth
# into the venv's site-packages, naming the checkout root; then
# .venv/bin/twistd --help lists the four plugins.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
TESTS ?=

# System packages: the interpreter and build tools, and the tools the lab and
# the tests drive.  dnsmasq-base is the dnsmasq binary without a system service
# (the lab starts its own instances inside namespaces).
APT_PACKAGES := python3 python3-venv python3-dev gcc libffi-dev tshark tcpdump \
	iproute2 nftables openssh-client dnsmasq-base udhcpc iperf3 openvpn wireguard-go wireguard-tools \
	strongswan-pki curl microsocks dante-server \
	strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins \
	libstrongswan-extra-plugins squid tinyproxy apache2-utils

# apt-get update runs at most once a day (and only when something is missing).
APT_UPDATE_MAX_AGE_MIN := 1440

LINT_PATHS := smobility tests twisted tools

.PHONY: help deps venv test demo bench lint clean distclean

help:
	@echo "targets: deps venv test demo bench lint clean distclean"
	@echo "  make test [TESTS=tests.test_x]   set up and run the tests (+ ruff, mypy)"

deps: $(STAMPS)/deps

# The peers are started by the tests and the lab themselves: while installing,
# a temporary policy-rc.d (unless one is in place) keeps apt from starting
# their system services (squid, tinyproxy, danted, strongswan).
$(STAMPS)/deps: Makefile
	@mkdir -p $(STAMPS)
	@if [ "$$(id -u)" != 0 ]; then \
		echo "note: not root: not running apt-get; make sure these are installed: $(APT_PACKAGES)"; \
		exit 0; \
	fi; \
	missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "system packages: all installed"; \
	else \
		echo "system packages to install:$$missing"; \
		if [ -z "$$(find $(STAMPS)/apt-update -mmin -$(APT_UPDATE_MAX_AGE_MIN) 2>/dev/null)" ]; then \
			apt-get update && touch $(STAMPS)/apt-update || exit 1; \
		fi; \
		policy=""; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
				&& policy=/usr/sbin/policy-rc.d; \
		fi; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
		status=$$?; \
		if [ -n "$$policy" ]; then rm -f "$$policy"; fi; \
		[ $$status -eq 0 ] || exit 1; \
	fi; \
	touch $@

venv: $(STAMPS)/venv

# The venv is rebuilt in place when the requirements or the packaging change.
$(STAMPS)/venv: requirements.txt requirements-dev.txt setup.py pyproject.toml | $(STAMPS)/deps
	@mkdir -p $(STAMPS)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -r requirements-dev.txt
	$(VPY) -m pip install --no-build-isolation -e .
	$(VPY) -c 'import sys, sysconfig; open(sysconfig.get_paths()["purelib"] + "/smobility-checkout.pth", "w").write(sys.argv[1] + "\n")' "$(CURDIR)"
	@$(VENV)/bin/twistd --help > $(STAMPS)/twistd-help.txt 2>&1 || true
	@for p in smobility-home smobility-relay smobility-mux smobility-client; do \
		grep -q "$$p" $(STAMPS)/twistd-help.txt \
			|| { echo "error: $(VENV)/bin/twistd --help does not list $$p"; exit 1; }; \
	done
	@echo "venv ready: twistd lists the smobility plugins"
	@touch $@

test: deps venv
	$(VPY) tools/runtests.py $(TESTS)

demo: deps venv
	$(VPY) -m smobility.demo $(DEMO_ARGS)

bench: deps venv
	$(VPY) -m smobility.bench

lint: venv
	$(VPY) -m ruff check $(wildcard $(LINT_PATHS))
	$(VPY) -m mypy

clean:
	rm -rf build dist *.egg-info _trial_temp* .mypy_cache .ruff_cache .hypothesis
	rm -f twisted/plugins/dropin.cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
