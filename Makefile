# The two commands of the README:
#   make demo   set everything up, train the demo model end to end, then serve the admin
#   make test   set everything up and run the whole suite on SQLite and on PostgreSQL
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/platform
HOST ?= 127.0.0.1:8000

.PHONY: setup demo sample-images serve test test-sqlite test-postgres lint services bench

$(BIN)/.installed: requirements/base.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $@

setup: $(BIN)/.installed

# make demo STEPS=600 TIMEOUT=1200: more steps; give up after TIMEOUT seconds without progress
demo: setup
	$(BIN)/python manage.py demo --base-url http://$(HOST) $(if $(STEPS),--steps $(STEPS)) $(if $(TIMEOUT),--timeout $(TIMEOUT))
	$(BIN)/python manage.py runserver $(HOST)

# Sample images (with .txt captions) for the README's examples: var/sample-images/sample01.jpg ...
sample-images: setup
	$(BIN)/python manage.py sample_images

serve: setup
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py runserver $(HOST)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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
