# medmeter: `make demo` runs the main job, `make test` the whole test suite.
# Both install what they need first (a venv and node_modules), from the registries only.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
SITE := $(VENV)/lib/python3.11/site-packages
export PATH := $(BIN):$(CURDIR)/node_modules/.bin:$(PATH)
export PROJECT_ROOT := $(CURDIR)
# Demo-only default so the main job runs unattended; set your own for real keystores.
export MEDMETER_KEYSTORE_PASSWORD ?= medmeter-demo-only

.PHONY: install demo test lint bench bench-quick bench-service clean

# The node matrix's Hardhat 3 node and the Node 22 runtime it needs live in tools/hardhat/ (their own
# package.json: Hardhat 3 wants "type": "module"; about 290 MB). `make install HARDHAT=0` skips them
# (the Hardhat row of tests/nodes then skips, saying so).
HARDHAT ?= 1
HARDHAT_INSTALLED := $(if $(filter 1,$(HARDHAT)),tools/hardhat/node_modules/.installed)

install: $(VENV)/.installed node_modules/.installed .medmeter/.solc-bin-installed $(HARDHAT_INSTALLED)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# brownie reads ${PROJECT_ROOT} in brownie-config.yaml; make it known to every venv process.
	echo "import os; os.environ.setdefault('PROJECT_ROOT', '$(CURDIR)')" > $(SITE)/medmeter-project-root.pth
	touch $@

node_modules/.installed: package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	@# brownie launches `anvil` from PATH; the venv's bin is on PATH once activated.
	ln -sf $(CURDIR)/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil $(BIN)/anvil
	touch $@

tools/hardhat/node_modules/.installed: tools/hardhat/package-lock.json
	npm ci --prefix tools/hardhat --ignore-scripts --no-audit --no-fund
	touch $@

# The shim names this checkout's driver, so it lives in this checkout (.medmeter/solc-bin), and this
# checkout's venv points py-solc-x (brownie) there: installing or deleting another checkout changes nothing here.
.medmeter/.solc-bin-installed: $(VENV)/.installed node_modules/.installed
	echo "import os; os.environ.setdefault('SOLCX_BINARY_PATH', '$(CURDIR)/.medmeter/solc-bin')" > $(SITE)/medmeter-solcx.pth
	SOLCX_BINARY_PATH=$(CURDIR)/.medmeter/solc-bin $(BIN)/medmeter toolchain install
	mkdir -p .medmeter && touch $@

demo: install
	$(BIN)/medmeter demo

test: install
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/pytest -p no:pytest-brownie -n 2 tests
	$(BIN)/brownie compile
	$(BIN)/brownie test
	tools/slither.sh

# The full scaling run (10k, 100k, 1M interactions; about 15 minutes on 2 cores), then the service's.
bench: install
	$(BIN)/python -m bench.run --sizes 10000,100000,1000000 --out bench/results.json
	$(MAKE) bench-service

# A small run for CI and quick checks; writes its own file so it never passes for the full one.
bench-quick: install
	$(BIN)/python -m bench.run --sizes 2000 --naive 50 --out bench/results-quick.json

# The platform service: 100,000 interactions posted back to back by 4 clients through `medmeter serve`,
# then 60,000 offered at 3,000/s for the latency a hospital system sees at that load (about 2 minutes).
bench-service: install
	$(BIN)/python -m bench.service_bench --count 100000 --clients 4 --paced-rate 3000 --paced-seconds 20 \
		--out bench/results.json

clean:
	-$(BIN)/medmeter devnet down
	rm -rf .medmeter build reports deployments
