"""The console's screenshots in docs/ (``make console-screenshots``): a real run, a real browser.

Runs the order saga on the broker at ``KAFKA_BOOTSTRAP_SERVERS`` (processor and workers as OS
processes, as ``make demo`` does), with some orders failing and being compensated; stops the
workers so that a few orders wait on their payment; puts one record the processor cannot read
on its inbox (a dead letter); cancels one waiting order from the console; then photographs the
console's pages in the system's Chromium (driven by Playwright, as the browser test does):

    docs/console-overview.png, console-list.png, console-instance.png, console-dlq.png,
    console-list-mobile.png (a phone's width)

    python tools/console_screenshots.py [--orders 40]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from pathlib import Path

from confluent_kafka import Producer
from playwright.sync_api import Page, expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from examples.order_fulfillment.measure import (
    SAGA,
    Journal,
    publish,
    start_processes,
    wait_until_ready,
)
from examples.order_fulfillment.saga import OrderFulfillment
from examples.order_fulfillment.scenario import plan_orders
from sagas.console.process import start_console
from sagas.local import LocalProcess, journal_end, journal_outcomes_from
from stream_processors.kafka.config import bootstrap_servers
from stream_processors.kafka.topics import SagaTopics, ensure_topics

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / ".sagalog" / "screenshots"
DOCS = ROOT / "docs"
TOKEN = uuid.uuid4().hex


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium: make chromium (or apt-get install chromium)")


def run_orders(
    topics: SagaTopics, count: int, run_id: str, processes: dict[str, LocalProcess]
) -> list[str]:
    """Start the processes, run ``count`` orders to their ends, then leave three waiting on
    their payment (workers stopped) and one undecodable record; returns the waiting ids."""
    journal = Journal(topics.journal, journal_end(topics.journal))
    processes |= start_processes(BASE, topics.partitions)
    wait_until_ready(processes["processor"], journal, run_id, 7, 120)
    orders = plan_orders(count, 0.15, 0.2, seed=7, run_id=run_id)
    publish(orders)
    journal_outcomes_from(topics.journal, journal.start, [o.event.order_id for o in orders], 120)
    for name in ("payments", "shipping"):
        processes[name].stop()
    waiting = plan_orders(count + 3, 0.0, 0.0, seed=8, run_id=run_id)[count:]
    publish(waiting)
    producer = Producer({"bootstrap.servers": bootstrap_servers()})
    producer.produce(topics.inbox, key=f"order-{run_id}-garbled".encode(), value=b"\x00garbled")
    producer.flush(30)
    return [order.event.order_id for order in waiting]


def photograph(url: str, waiting: list[str]) -> None:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium(), headless=True)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(30_000)
        log_in(page, url)
        saga = OrderFulfillment.definition.name
        page.goto(f"{url}/s/{saga}?q={waiting[-1]}")  # once indexed, the counts are all in
        expect(page.get_by_test_id("instance-link")).to_have_count(1)
        page.goto(f"{url}/")
        shoot(page, "overview")
        # One waiting order cancelled from its page: the timeline then shows who did it.
        page.goto(f"{url}/s/{saga}/i/{waiting[0]}")
        page.get_by_text("Operator actions").click()
        page.get_by_test_id("action").select_option("cancel")
        page.get_by_test_id("reason").fill("customer asked to cancel")
        page.get_by_test_id("send-action").click()
        expect(page.get_by_test_id("by").first).to_be_visible()
        expect(page.locator("[data-testid=diagram] svg")).to_be_visible()
        page.locator("details").first.evaluate("node => node.open = false")
        shoot(page, "instance", full=True)
        page.goto(f"{url}/s/{saga}")
        expect(page.get_by_test_id("instance-link").first).to_be_visible()
        shoot(page, "list")
        page.goto(f"{url}/s/{saga}/dlq")
        shoot(page, "dlq")
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{url}/s/{saga}?status=running&status=failed")
        expect(page.get_by_test_id("instance-link").first).to_be_visible()
        shoot(page, "list-mobile")
        browser.close()


def log_in(page: Page, url: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=secret]", TOKEN)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("user")).to_have_text("alice")


def shoot(page: Page, name: str, full: bool = False) -> None:
    path = DOCS / f"console-{name}.png"
    page.wait_for_timeout(500)  # let a poll's swap settle
    page.screenshot(path=str(path), full_page=full)
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=40)
    options = parser.parse_args()
    shutil.rmtree(BASE, ignore_errors=True)
    topics = SagaTopics.for_saga(OrderFulfillment.definition, 8)
    ensure_topics(topics)
    env = {"SAGALOG_STATE_DIR": str(BASE / "state"), "PYTHONPATH": str(ROOT)}
    console, url = start_console([SAGA], BASE / "logs" / "console.log", TOKEN, env)
    processes: dict[str, LocalProcess] = {"console": console}
    try:
        waiting = run_orders(topics, options.orders, uuid.uuid4().hex[:8], processes)
        photograph(url, waiting)
    finally:
        for process in processes.values():
            process.stop()


if __name__ == "__main__":
    main()
