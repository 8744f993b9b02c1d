# Sagalog's entry points. Each target does its own set-up: the virtualenv, the broker, the topics.
#   make demo        the order-fulfilment saga end to end on a real broker
#   make test        ruff, mypy, and pytest (unit + integration) against a real broker
#   make kafka       start a single-node broker (or find one); kafka-stop, kafka-reset

SYSTEM_PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BROKER := tools/kafka/broker.sh
# broker.sh probes readiness with the project's own client library, from the virtualenv.
export PYTHON := $(abspath $(BIN)/python)

.PHONY: venv kafka kafka-stop kafka-reset test lint unit demo clean

venv: $(VENV)/.installed

# Re-install when the project's metadata changes; the stamp keeps repeat runs instant.
$(VENV)/.installed: pyproject.toml
	@$(SYSTEM_PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Sagalog needs Python 3.11+, found " + sys.version.split()[0])'
	@[ -x $(BIN)/python ] || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

kafka: venv
	@$(BROKER) start

kafka-stop:
	@$(BROKER) stop

kafka-reset:
	@$(BROKER) reset

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	@$(BROKER) with -- $(BIN)/pytest

# Options go through DEMO_ARGS, e.g. make demo DEMO_ARGS="--orders 5000 --shipping-failure-rate 0.1"
demo: venv
	@$(BROKER) with -- $(BIN)/python -m examples.order_fulfillment.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .sagalog .pytest_cache .mypy_cache .ruff_cache
