"""The web console in a real headless Chromium, on the real broker, with real processes.

``sagas console`` runs as its own process from the start (its index follows the snapshots
changelog as the run goes). A processor and the order saga's workers run some orders (some fail,
some are compensated); then the workers stop and a few more orders wait on their payment. The
test logs in, sees the saga, searches the list and filters it by status,
opens a waiting instance (state, diagram, timeline), cancels it from the page, and checks in the
journal that the processor applied the cancel under the logged-in user's name; the page shows it
without a reload. A record the processor could not decode is dead-lettered, found on the
dead-letter page and sent back from there (and dead-lettered again: the DLQ shows it twice).

Chromium is the system's (``make chromium`` installs it); Playwright drives it. Without it the
test fails under CI=true and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from playwright.sync_api import Browser, expect, sync_playwright

from examples.order_fulfillment.saga import OrderFulfillment
from sagas.console.process import start_console
from sagas.operator import send_action
from stream_processors.core.journal import JournalEntry, Kind
from tests.conftest import KafkaCluster
from tests.integration.saga_harness import REPO_ROOT, SAGA_TARGET, TOPICS, SagaRun

pytestmark = pytest.mark.kafka

TOKEN = "test-console-token"
USER = "alice"


def chromium_path() -> str:
    """The system's Chromium; fails under CI=true when there is none, skips otherwise."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "no system Chromium (make chromium, or apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def console(saga: SagaRun, kafka: KafkaCluster) -> Iterator[str]:
    """``sagas console`` of the order saga, as its own process, next to the run's processor
    (its state folder: the console keeps its index there); yields its URL."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "SAGALOG_STATE_DIR": str(saga.state_dir),
        "PYTHONPATH": str(REPO_ROOT),
    }
    log = saga.tmp_path / "logs" / "console.log"
    process, url = start_console([SAGA_TARGET], log, TOKEN, env)
    try:
        yield url
        assert process.running, process.log_tail()
    finally:
        process.stop()


def _journaled(saga: SagaRun, instance: str, kind: Kind, timeout: float = 30) -> JournalEntry:
    """The instance's first journal entry of ``kind``, once the processor has committed it."""
    deadline = time.monotonic() + timeout
    while True:
        saga.journal.catch_up()
        found = [e for e in saga.journal.entries.get(instance, []) if e.kind == kind]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {kind} for {instance} in {timeout:.0f} s"
        time.sleep(0.5)


def _undecodable(kafka: KafkaCluster, key: str) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(TOPICS.inbox, key=key.encode(), value=b"not a record")
    assert producer.flush(30) == 0


def test_console_lists_filters_opens_and_cancels(
    saga: SagaRun, kafka: KafkaCluster, browser: Browser, console: str
) -> None:
    saga.start_processor()
    workers = saga.processes.workers()
    orders = saga.plan(12, seed=4, failures=0.25)
    saga.publish(orders)
    outcomes = saga.outcomes(orders)
    failed = sorted(i for i, s in outcomes.items() if s == "failed")
    assert failed and "completed" in outcomes.values()
    for worker in workers:
        worker.stop()
    later = saga.plan(14, seed=5)[12:]  # two more ids of this run
    waiting = [order.event.order_id for order in later]
    saga.publish(later)
    garbage = f"{saga.prefix}garbage"
    _undecodable(kafka, garbage)

    url = console  # up before the run: its index follows the changelog as the run goes
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)

    # Logging in: every page asks for it first.
    page.goto(f"{url}/")
    assert "/login" in page.url
    page.fill("input[name=name]", USER)
    page.fill("input[name=secret]", "wrong")
    page.click("button[type=submit]")
    expect(page.get_by_test_id("flash")).to_contain_text("wrong name or secret")
    page.fill("input[name=name]", USER)
    page.fill("input[name=secret]", TOKEN)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("user")).to_have_text(USER)
    card = page.get_by_test_id(f"saga-{TOPICS.saga}")
    expect(card).to_be_visible()

    # The list: this run's instances by searching their id prefix, then only the failed ones.
    page.goto(f"{url}/s/{TOPICS.saga}")
    page.get_by_label("Search instance id").fill(saga.prefix)
    expect(page.get_by_test_id("shown")).to_contain_text(f"of {len(outcomes) + 2}")
    page.locator("input[name=status][value=failed]").check()
    links = page.get_by_test_id("instance-link")
    expect(links).to_have_count(len(failed))
    assert sorted(links.all_inner_texts()) == failed
    page.locator("input[name=status][value=failed]").uncheck()
    page.locator("input[name=status][value=running]").check()
    expect(links).to_have_count(len(waiting))
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the list still fits
    expect(page.locator("th.wide").first).to_be_hidden()
    expect(links.first).to_be_in_viewport()
    page.set_viewport_size({"width": 1280, "height": 900})

    # An instance waiting on its payment: state, diagram with where it is, timeline.
    links.filter(has_text=waiting[0]).click()
    expect(page.get_by_test_id("status")).to_have_text("running")
    expect(page.locator("[data-testid=diagram] svg")).to_be_visible()
    expect(page.get_by_test_id("timeline")).to_contain_text("CommandSent")
    expect(page.get_by_test_id("state")).to_contain_text(waiting[0])

    # Cancel it from the page: the processor journals it with the user's name.
    page.get_by_text("Operator actions").click()
    page.get_by_test_id("action").select_option("cancel")
    page.get_by_test_id("reason").fill("customer called")
    page.get_by_test_id("send-action").click()
    expect(page.get_by_test_id("flash")).to_contain_text(f"applied cancel to {waiting[0]}")
    action = _journaled(saga, waiting[0], Kind.OPERATOR_ACTION)
    assert action.reason == f"cancel by {USER}: customer called"
    # ... and the open page shows it by itself (no reload).
    expect(page.get_by_test_id("by").first).to_have_text(f"by {USER}")
    expect(page.get_by_test_id("status")).not_to_have_text("running")
    expect(page.locator("[data-testid=diagram] svg")).to_be_visible()  # drawn again

    # Live: the other waiting order's page, open, shows a cancel sent from elsewhere.
    page.goto(f"{url}/s/{TOPICS.saga}/i/{waiting[1]}")
    expect(page.get_by_test_id("status")).to_have_text("running")
    page.evaluate("document.body.dataset.loaded = 'once'")  # gone if the page reloads
    send_action(
        OrderFulfillment.definition, waiting[1], "cancel", "bob", "by hand", kafka.bootstrap
    )
    expect(page.get_by_test_id("by").first).to_have_text("by bob")
    expect(page.locator("[data-testid=diagram] svg")).to_be_visible()
    assert page.evaluate("document.body.dataset.loaded") == "once"

    # The undecodable record: on the dead-letter page, sent back, dead-lettered again.
    page.goto(f"{url}/s/{TOPICS.saga}/dlq")
    section = page.get_by_test_id(f"dlq-{TOPICS.dlq}")
    rows = section.locator("tr", has_text=garbage)
    expect(rows).to_have_count(1)
    rows.locator("input[type=checkbox]").check()
    section.get_by_test_id("redrive").click()
    expect(page.get_by_test_id("flash")).to_contain_text("sent 1 back")
    deadline = time.monotonic() + 30
    while page.get_by_test_id(f"dlq-{TOPICS.dlq}").locator("tr", has_text=garbage).count() < 2:
        assert time.monotonic() < deadline, "the redriven record was not dead-lettered again"
        time.sleep(1)
        page.reload()
