# mlmoat — the two front-door commands are `make local` and `make test`.
# Every target creates what it needs: the virtualenvs come from the lock files in requirements/.

PYTHON ?= python3.11
UV_VERSION := 0.13.8
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv
venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --python $(BIN)/python requirements/dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

# ------------------------------------------------------------------ tool virtualenvs
# SAM CLI and checkov live in their own virtualenvs (their pins never constrain the app).
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov

.PHONY: venv-sam venv-checkov node
venv-sam: $(SAM_VENV)/.stamp
$(SAM_VENV)/.stamp: requirements/sam.lock | $(VENV)/.stamp
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(BIN)/uv pip sync --quiet --python $(SAM_VENV)/bin/python requirements/sam.lock
	touch $@

venv-checkov: $(CHECKOV_VENV)/.stamp
$(CHECKOV_VENV)/.stamp: requirements/checkov.lock | $(VENV)/.stamp
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(BIN)/uv pip sync --quiet --python $(CHECKOV_VENV)/bin/python requirements/checkov.lock
	touch $@

# Node packages (dynalite, the second DynamoDB implementation for integration tests), from the
# npm registry through the lock file, when the project has one.
node: $(if $(wildcard package-lock.json),node_modules/.stamp)
node_modules/.stamp: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# ------------------------------------------------------------------ build
# SAM runs with telemetry off; its makefile builds (layers/*/Makefile) pip-install from the
# locks with this pip, for the Lambda target (python3.13, manylinux x86_64).
export SAM_CLI_TELEMETRY := 0
export PIP := $(CURDIR)/$(BIN)/python -m pip
SAM := $(CURDIR)/$(SAM_VENV)/bin/sam
BUILD_FILES := $(shell find src/security src/handlers models layers -type f \
	-not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null | LC_ALL=C sort)
# The list itself is an input, so a deleted source file also triggers a rebuild.
BUILD_INPUTS := template.yaml requirements/runtime.lock .aws-sam/inputs.txt $(BUILD_FILES)

.aws-sam/inputs.txt: FORCE
	@mkdir -p .aws-sam
	@echo '$(BUILD_FILES)' | cmp -s - $@ || echo '$(BUILD_FILES)' > $@

.PHONY: FORCE
FORCE:

# ------------------------------------------------------------------ CPython 3.13
# The Lambda runtime's Python, from Debian trixie's packages pinned with their checksums in
# requirements/python3.13.lock (src/mlmoat/python313.py), unpacked beside the system's Python
# and run through its own loader: it compiles the build's byte-code and runs `mlmoat local`.
PY313_DIR := .cache/python3.13
PY313 := $(CURDIR)/$(PY313_DIR)/bin/python3.13
.PHONY: python313 python313-lock lambda-runtime
python313: $(PY313_DIR)/.stamp
$(PY313_DIR)/.stamp: requirements/python3.13.lock | $(VENV)/.stamp
	$(BIN)/python -m mlmoat.python313 fetch --lock $< --into $(PY313_DIR)
	touch $@

# Pins the current trixie versions (Debian drops superseded ones from its archive).
python313-lock: | $(VENV)/.stamp
	$(BIN)/python -m mlmoat.python313 lock --lock requirements/python3.13.lock --state .cache/apt

# Byte-code as it ships: cp313, unchecked hash-based pycs (imports never stat the source, which
# is read-only on Lambda anyway), recorded under the paths the files have on Lambda, and the same
# bytes on every run (a fixed hash seed orders the frozenset constants).
# $(call compile313,DIR,LAMBDA_PATH)
compile313 = PYTHONHASHSEED=0 $(PY313) -I -m compileall -q --invalidation-mode unchecked-hash \
	-s $(1) -p $(2) $(1)

# What the Lambda runtime provides besides the standard library (boto3), for `mlmoat local`.
LAMBDA_RUNTIME := .cache/lambda-runtime/python
lambda-runtime: $(LAMBDA_RUNTIME)/.stamp
$(LAMBDA_RUNTIME)/.stamp: requirements/lambda-runtime.lock $(PY313_DIR)/.stamp | $(VENV)/.stamp
	rm -rf $(LAMBDA_RUNTIME)
	$(PIP) install --quiet --disable-pip-version-check --no-compile --no-deps --require-hashes \
		--only-binary=:all: --implementation cp --python-version 3.13 \
		--platform manylinux_2_28_x86_64 --target $(LAMBDA_RUNTIME) -r $<
	$(call compile313,$(LAMBDA_RUNTIME),/var/lang/lib/python3.13/site-packages)
	touch $@

.PHONY: build
# The Lambda build (python3.13, manylinux x86_64), the one that ships and the one `mlmoat local`
# and the tests run; then its cp313 byte-code: functions as /var/task, layers as /opt/python.
# First `mlmoat models check`: a model the functions would refuse at init never ships.
build: .aws-sam/build/.stamp
.aws-sam/build/.stamp: $(BUILD_INPUTS) $(PY313_DIR)/.stamp $(LAMBDA_RUNTIME)/.stamp | $(VENV)/.stamp $(SAM_VENV)/.stamp
	$(BIN)/mlmoat models check --model-dir models
	$(SAM) build --template-file template.yaml --build-dir .aws-sam/build --parallel
	for dir in .aws-sam/build/*Function; do $(call compile313,$$dir,/var/task) || exit 1; done
	for dir in .aws-sam/build/*Layer/python; do $(call compile313,$$dir,/opt/python) || exit 1; done
	touch $@

# ------------------------------------------------------------------ checks
.PHONY: lint scan test local

lint: $(VENV)/.stamp $(SAM_VENV)/.stamp
	$(SAM) validate --lint --template-file template.yaml
	$(BIN)/ruff check src tests
	$(BIN)/mypy

# Scanners with their own rules: 0 failed checkov checks (skips carry a reason in the
# template's Metadata), 0 medium/high bandit findings, 0 known vulnerabilities in the locks.
scan: $(VENV)/.stamp $(CHECKOV_VENV)/.stamp
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework cloudformation \
		-f template.yaml
	$(BIN)/bandit --quiet --recursive --severity-level medium src
	mkdir -p build
	$(BIN)/pip-audit --progress-spinner off --disable-pip --require-hashes --format json \
		--output build/pip-audit.json -r requirements/runtime.lock -r requirements/dev.lock \
		-r requirements/lambda-runtime.lock -r requirements/test313.lock
	$(BIN)/python -c "$$PIP_AUDIT_SUMMARY" build/pip-audit.json

# pip-audit exits non-zero on any known vulnerability. Packages it could not look up (here the
# registry proxy does not serve PyPI's JSON API and OSV is unreachable) are counted and shown;
# PIP_AUDIT_STRICT=1 makes them fail the scan too (use it where the vulnerability service is
# reachable). README.md, "Scanners", documents this exception.
define PIP_AUDIT_SUMMARY
import json, os, sys
deps = json.load(open(sys.argv[1]))["dependencies"]
vulns = [(d["name"], v["id"]) for d in deps for v in d.get("vulns", [])]
skipped = [d["name"] for d in deps if "skip_reason" in d]
print(f"pip-audit: {len(deps)} pinned packages, {len(deps) - len(skipped)} audited, "
      f"{len(skipped)} not audited (vulnerability service unreachable), {len(vulns)} known vulnerabilities")
sys.exit(1 if vulns or (skipped and os.environ.get("PIP_AUDIT_STRICT") == "1") else 0)
endef
export PIP_AUDIT_SUMMARY

PYTEST_ARGS ?=
test: $(VENV)/.stamp $(SAM_VENV)/.stamp $(CHECKOV_VENV)/.stamp node lint scan build
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc
	$(MAKE) --no-print-directory test-py313

# The security layer's unit tests and the handler suite again, under CPython 3.13 against the
# Lambda build itself: its function dir (as the `handlers` package), its layers with their cp313
# byte-code, the runtime's boto3; the test tools (requirements/test313.lock) come last and the
# sources (for the tooling the fixtures use) after them, so nothing shadows what ships.
TEST313 := .cache/test313
PY313_TESTS ?= tests/unit tests/handlers
$(TEST313)/.stamp: requirements/test313.lock $(PY313_DIR)/.stamp | $(VENV)/.stamp
	rm -rf $(TEST313)
	$(PIP) install --quiet --disable-pip-version-check --no-compile --no-deps --require-hashes \
		--only-binary=:all: --implementation cp --python-version 3.13 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --target $(TEST313) -r $<
	PYTHONHASHSEED=0 $(PY313) -I -m compileall -q $(TEST313) > /dev/null
	touch $@

.PHONY: test-py313
test-py313: .aws-sam/build/.stamp $(TEST313)/.stamp
	mkdir -p .cache/py313-path
	ln -sfn $(CURDIR)/.aws-sam/build/PredictFunction .cache/py313-path/handlers
	MLMOAT_TEST_BUILD=$(CURDIR)/.aws-sam/build MLMOAT_TEST_PYTHON=$(PY313) PYTHONDONTWRITEBYTECODE=1 \
	PYTHONPATH=$(CURDIR)/.cache/py313-path:$(CURDIR)/.aws-sam/build/SecurityLayer/python:$(CURDIR)/.aws-sam/build/DepsLayer/python:$(CURDIR)/$(LAMBDA_RUNTIME):$(CURDIR)/$(TEST313):$(CURDIR)/src \
		$(PY313) -m pytest -p no:cacheprovider $(PY313_TESTS)

# Starts an embedded DynamoDB, bootstraps it, seeds a demo key and serves the API until Ctrl-C
# (on 127.0.0.1:3000; another port: make local LOCAL_ARGS='--port 3001').
LOCAL_ARGS ?=
local: $(VENV)/.stamp
	$(BIN)/mlmoat local up $(LOCAL_ARGS)

# ---- Long runs: not part of `make test`, which runs a smoke of each. ----

# Benchmark against the seed's recipe, side by side (docs/performance.md).
BENCH_ARGS ?=
.PHONY: bench
bench: $(VENV)/.stamp $(SAM_VENV)/.stamp build
	mkdir -p build
	$(BIN)/mlmoat bench --no-build --json build/bench.json $(BENCH_ARGS)

# DynamoDB capacity per prediction at simulated rates (docs/performance.md, "Capacity model"):
# real predictions and the monitor against an embedded moto server, no build needed.
CAPACITY_ARGS ?=
.PHONY: capacity
capacity: $(VENV)/.stamp
	mkdir -p build
	$(BIN)/mlmoat bench --capacity --json build/capacity.json $(CAPACITY_ARGS)

# Multi-instance load test: start-api instances sharing one local DynamoDB, API keys and JWT
# subjects with small budgets/rate limits; non-zero exit unless every limit, budget, audit
# record and counter is exact and there is no 5xx (docs/faults.md). Report: reports/load.json.
LOAD_ARGS ?= --instances 4 --clients 16 --keys 48 --jwt-subjects 8 --duration 300
.PHONY: load
load: $(VENV)/.stamp build
	mkdir -p reports
	$(BIN)/python -m mlmoat.loadtest $(LOAD_ARGS) --report reports/load.json

# One key's DynamoDB items under minutes of steady traffic through the real local stack
# (start-api instances, their queue pollers feeding the extraction monitor): non-zero exit unless
# every item of the key stays under 1 KB and every request is answered 200
# (docs/performance.md, "Sustained traffic"). Report: reports/sustained.json.
SUSTAINED_ARGS ?= --rate 10 --duration 180 --every 15 --instances 2
.PHONY: sustained
sustained: $(VENV)/.stamp build
	mkdir -p reports
	$(BIN)/python -m mlmoat.bench.sustained $(SUSTAINED_ARGS) --report reports/sustained.json

# Longer fuzzing: Schemathesis from `mlmoat openapi` against start-api, and the Hypothesis
# parser properties. Report: reports/schemathesis.json.
FUZZ_EXAMPLES ?= 300
.PHONY: fuzz
fuzz: $(VENV)/.stamp build
	mkdir -p reports
	MLMOAT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MLMOAT_FUZZ_PROPERTY_EXAMPLES=3000 \
	MLMOAT_FUZZ_REPORT=$(CURDIR)/reports/schemathesis.json $(BIN)/pytest -s tests/fuzz

# The red team's default run (about 8 min of one core): every attack against every model and
# defence configuration through the Lambda build under CPython 3.13; report, plots and JSON in
# reports/redteam/, then its headline table and detection plot copied to docs/redteam/. `mlmoat redteam` exits 1
# when a target is missed, so a failing run is not copied.
.PHONY: redteam
redteam: $(VENV)/.stamp build
	$(BIN)/mlmoat redteam --out reports/redteam
	$(BIN)/mlmoat redteam docs --out reports/redteam --docs-dir docs/redteam

# The outside security test's regression suite (tests/findings.py): the tests of every finding,
# each failing on the code the test ran against and passing now; `make test` runs them too.
.PHONY: regression
regression: $(VENV)/.stamp build
	$(BIN)/pytest $$($(BIN)/python tests/findings.py)

# The byte-code recipe of `make build` for one dir (tests/packaging/test_bytecode.py runs it).
.PHONY: print-compile313
print-compile313:
	@echo '$(call compile313,$(DIR),$(LAMBDA_PATH))'
