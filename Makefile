# Sagalog's entry points. Each target does its own set-up: the virtualenv, the broker, the topics.
#   make demo        the order-fulfilment saga end to end on a real broker (KEEP=1: then the console)
#   make test        ruff, mypy, and pytest (unit + integration) against a real broker
#   make mermaid     Mermaid's parser (node), for the test that checks `sagas diagram`'s output
#   make chromium    the system's Chromium, for the console's browser test (apt-get, when missing)
#   make prometheus  Prometheus' server (Debian's package), for the dashboard's integration test
#   make kafka       start a single-node broker (or find one); kafka-stop, kafka-reset
#                    (KAFKA_BROKERS=3 make kafka: a three-node KRaft cluster instead)
#   make chaos       the chaos suite, then its cluster phase (chaos-cluster); chaos-quick: short form
#   make bench       benchmarks against the limit and the peers (docs/benchmarks.md); bench-quick

SYSTEM_PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BROKER := tools/kafka/broker.sh
# broker.sh probes readiness with the project's own client library, from the virtualenv.
export PYTHON := $(abspath $(BIN)/python)

.PHONY: venv mermaid chromium prometheus console-screenshots long kafka kafka-stop kafka-reset test lint unit demo flow-control chaos chaos-cluster chaos-quick clean bench bench-quick bench-venv temporal

venv: $(VENV)/.installed

# Re-install when the project's metadata changes; the stamp keeps repeat runs instant.
$(VENV)/.installed: pyproject.toml
	@$(SYSTEM_PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Sagalog needs Python 3.11+, found " + sys.version.split()[0])'
	@[ -x $(BIN)/python ] || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# Mermaid's own parser, which tests/unit/test_diagram.py runs on the diagrams `sagas diagram` prints.
# Without npm the target says so and carries on: that test then fails under CI=true.
MERMAID := tools/mermaid
mermaid: $(MERMAID)/node_modules/.installed

$(MERMAID)/node_modules/.installed: $(MERMAID)/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix $(MERMAID) --silent --no-audit --no-fund && touch $@; \
	  else echo "no npm: Mermaid's parser is not installed (the diagram syntax test needs it)"; fi

# The system's Chromium, which tests/integration/test_console.py drives through Playwright (no
# browser download: Playwright is given its path). Without apt-get or root the target says so
# and carries on: that test then fails under CI=true.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && echo "installing chromium (apt-get)" \
	       && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "no chromium and no way to install it here: the console's browser test needs it"
# Prometheus' server, which tests/integration/test_dashboard.py runs to evaluate every query of the
# Grafana dashboard. Installed from the system's packages when missing (as root, with apt-get);
# otherwise the target says so and carries on: that test then fails under CI=true.
prometheus:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	       || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; }; } \
	  || echo "no prometheus: the dashboard's integration test needs it (apt-get install prometheus)"

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

# The unit tests need no broker and run on two processes; then the integration tests, one at a
# time (they share the broker, and some restart it), on a broker started for them.
test: lint mermaid chromium prometheus
	$(BIN)/pytest tests/unit -n 2
	@$(BROKER) with -- $(BIN)/pytest tests/integration

# Tests marked long (pytest -m long): reproductions too long, or not steady enough yet, to gate CI.
long: venv
	@$(BROKER) with -- $(BIN)/pytest -m long

# Options go through DEMO_ARGS, e.g. make demo DEMO_ARGS="--orders 5000 --shipping-failure-rate 0.1";
# make demo KEEP=1 keeps the processes and the broker up afterwards, with the web console open.
demo: venv
	@$(BROKER) with -- $(BIN)/python -m examples.order_fulfillment.demo $(if $(KEEP),--keep) $(DEMO_ARGS)

# The console's screenshots in docs/ (tools/console_screenshots.py), on a broker of their own.
SCREENSHOTS_PORT ?= 9394
console-screenshots: venv chromium
	@KAFKA_PORT=$(SCREENSHOTS_PORT) $(BROKER) with -- $(BIN)/python tools/console_screenshots.py

# Benchmarks get their own broker port, so that other brokers (tests, chaos) do not disturb it,
# and their own extra (matplotlib, pyinstrument, faust-streaming, temporalio).
# Options go through BENCH_ARGS, e.g. make bench BENCH_ARGS="--only engine --only limit".
BENCH_PORT ?= 9392
TEMPORAL_CLI := github.com/temporalio/cli/cmd/temporal@v1.5.1

bench-venv: venv $(VENV)/.bench-installed

$(VENV)/.bench-installed: pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

# Temporal's CLI (with its dev server) from source; the Temporal figures are skipped without it.
temporal:
	@command -v temporal >/dev/null || [ -x "$$HOME/go/bin/temporal" ] \
	  || (command -v go >/dev/null && echo "go install $(TEMPORAL_CLI)" && go install $(TEMPORAL_CLI)) \
	  || echo "no Go toolchain: the Temporal comparison will be skipped"

bench: bench-venv temporal
	@KAFKA_PORT=$(BENCH_PORT) $(BROKER) with -- $(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: bench-venv temporal
	@KAFKA_PORT=$(BENCH_PORT) $(BROKER) with -- $(BIN)/python -m bench --quick $(BENCH_ARGS)

# Flow control's integration tests at the issue's full sizes (1,000 sagas at 20 per second,
# a backlog of 2,000): about 5 minutes here; make test runs them smaller (about 2.5 minutes).
flow-control: venv
	@SAGALOG_FLOW_FULL=1 $(BROKER) with -- $(BIN)/pytest tests/integration/test_flow_control.py -s

clean:
	rm -rf $(VENV) .sagalog .pytest_cache .mypy_cache .ruff_cache

# The chaos suite on a broker of its own (it restarts it): 10,000 sagas, kills, bad input; then
# the cluster phase (chaos-cluster) whatever the first part's result, failing if either failed.
CHAOS_PORT ?= 9492
chaos: venv
	@rc=0; KAFKA_PORT=$(CHAOS_PORT) $(BROKER) with -- $(BIN)/python -m chaos --report-json docs/reliability.json $(CHAOS_ARGS) || rc=1; \
	  $(MAKE) --no-print-directory chaos-cluster || rc=1; exit $$rc

# The cluster phase (chaos/cluster.py) on a three-broker KRaft cluster of its own: 10,000 sagas
# through a rolling restart and a broker SIGKILL, with process kills; then liveness checks.
# chaos-quick is its short form: 1,000 sagas, one rolling restart, no SIGKILL (5 to 7 minutes
# here: each broker takes 30-70 s to stop, start and catch up on 2 shared cores).
CHAOS_CLUSTER_PORT ?= 9540
CLUSTER := KAFKA_PORT=$(CHAOS_CLUSTER_PORT) KAFKA_BROKERS=3 $(BROKER)
chaos-cluster: venv
	@$(CLUSTER) with -- $(BIN)/python -m chaos --cluster --publish-seconds 420 --processor-kills 20 \
	  --report-json docs/reliability-cluster.json $(CHAOS_ARGS)

chaos-quick: venv
	@$(CLUSTER) with -- $(BIN)/python -m chaos --cluster --sagas 1000 --publish-seconds 240 \
	  --processor-kills 5 --worker-kills 1 --no-broker-sigkill $(CHAOS_ARGS)
