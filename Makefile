# The two commands of the README:
#   make demo   set everything up, train the demo model end to end, then serve the site with a worker
#   make test   set everything up and run the whole suite on SQLite and on PostgreSQL
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/platform
HOST ?= 127.0.0.1:8000

.PHONY: setup lock check-newest demo docs sample-images serve test test-sqlite test-postgres lint services bench

# Installs exactly the versions (and files, by hash) that requirements/dev.lock pins, so two machines or two
# CI runs test the same code. The .txt inputs are prerequisites too: after editing one, setup stops with a
# message until `make lock` has brought the locks up to date.
$(BIN)/.installed: requirements/dev.lock requirements/production.lock requirements/gpu.lock $(wildcard requirements/*.txt)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python requirements/check_lock.py requirements/dev.txt:requirements/dev.lock \
		requirements/production.txt:requirements/production.lock requirements/gpu.txt:requirements/gpu.lock
	touch $@

setup: $(BIN)/.installed

# Refreshes requirements/dev.lock and production.lock from the .txt inputs with pip-tools (in var/lock-tools,
# not the project's .venv). Pins that still fit are kept; UPGRADE=1 takes the newest version in every range,
# UPGRADE="gunicorn redis" only those. torch resolves to the machine's local CPU wheel (2.13.0+cpu).
LOCK_TOOLS := pip==26.3 pip-tools==7.6.2
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" var/lock-tools/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	$(if $(filter 1,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p)))
lock:
	$(PYTHON) -m venv var/lock-tools
	var/lock-tools/bin/python -m pip install --quiet $(LOCK_TOOLS)
	$(PIP_COMPILE) -o requirements/dev.lock requirements/dev.txt
	$(PIP_COMPILE) -c requirements/dev.lock -o requirements/production.lock requirements/production.txt
	@# GPU machines: PyPI's CUDA build of the same torch (this machine's pip config points at its local CPU wheel,
	@# so that config is left out), everything else at dev.lock's and production.lock's versions: what CI tested.
	cat requirements/dev.lock requirements/production.lock | grep -E '^[A-Za-z0-9._-]+==' | sed 's/ \\$$//' \
		| grep -v -E '^(torch|torchvision)==' | sort -u > var/lock-tools/gpu-constraints.txt
	PIP_FIND_LINKS= PIP_CONFIG_FILE=/dev/null $(PIP_COMPILE) --index-url https://pypi.org/simple \
		-c var/lock-tools/gpu-constraints.txt -o requirements/gpu.lock requirements/gpu.txt

# The newest versions requirements/dev.txt's ranges admit, with the engine's tests run on them (in var/newest, not
# the project's .venv): the ranges must only admit what works. Run it before `make lock UPGRADE=1` and weekly.
check-newest:
	$(PYTHON) -m venv var/newest
	var/newest/bin/python -m pip install --quiet --upgrade -r requirements/dev.txt
	var/newest/bin/python -m pip list --format=freeze | grep -i -E '^(torch|diffusers|transformers|peft|accelerate|torchao)=='
	var/newest/bin/pytest -m engine -p no:cacheprovider

# make demo STEPS=600 TIMEOUT=1200: more steps; give up after TIMEOUT seconds without progress
demo: setup docs
	$(BIN)/python manage.py demo --serve $(HOST) $(if $(STEPS),--steps $(STEPS)) $(if $(TIMEOUT),--timeout $(TIMEOUT))

# The documentation site from docs/ (mkdocs.yml), strict: a broken link or reference fails. The server shows it
# at /docs/ (DOCS_SITE_DIR, default var/docs-site); `.venv/bin/mkdocs serve` previews it while editing.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir var/docs-site

# Sample images (with .txt captions) for the README's examples: var/sample-images/sample01.jpg ...
sample-images: setup
	$(BIN)/python manage.py sample_images

serve: setup
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py runserver $(HOST)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint services test-sqlite test-postgres

test-sqlite: setup
	$(BIN)/python manage.py makemigrations --check --dry-run --settings=config.settings.test
	$(BIN)/pytest

test-postgres: setup services
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -m "not engine"

# PostgreSQL (and Redis) run on every machine here; start them if they are down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
		echo "starting PostgreSQL"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; \
		for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
		pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable at 127.0.0.1:5432"; exit 1; }; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { \
		command -v redis-server >/dev/null && { echo "starting Redis"; redis-server --daemonize yes --bind 127.0.0.1 -::1 \
		--port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; } || true; }

# Benchmarks (CPU figures here; GPU ones where a GPU is present): prints a table, writes bench/results/*.json
bench: setup services
	$(BIN)/python bench/run.py
