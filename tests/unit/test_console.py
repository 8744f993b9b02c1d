"""The web console without Kafka: logins (token, users file), the timeline's categories, the
list's query string, and the pages over an index fed here (Starlette's test client; the index
feed threads are off). The browser test on the real broker is tests/integration/test_console.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from examples.order_fulfillment.messages import OrderPlaced, OrderState
from examples.order_fulfillment.saga import OrderFulfillment
from sagas.cli import app
from sagas.console.auth import AuthError, Gate, hash_password, password_matches, read_users
from sagas.console.data import SagaView
from sagas.console.timeline import COMMAND, OPERATOR, OUTCOME, REPLY, category, timeline
from sagas.console.web import PER_PAGE, ListQuery, Settings, create_app
from stream_processors.core.instance import Instance, Status
from stream_processors.core.journal import JournalEntry, Kind
from stream_processors.core.model import OperatorAction
from stream_processors.tools.history import Located
from stream_processors.tools.index import Change, Filters, Index, Page, row_of

DEFINITION = OrderFulfillment.definition

# -- logins -----------------------------------------------------------------------------------


def test_a_token_lets_in_any_name_and_nothing_else() -> None:
    gate = Gate(token="s3cret")
    assert gate.login(" bob ", "s3cret") == "bob"
    assert gate.login("bob", "wrong") is None
    assert gate.login("", "s3cret") is None  # the name is journaled: it is required
    assert gate.login("a:b", "s3cret") is None


def test_users_file_holds_hashes_that_check_passwords(tmp_path: Path) -> None:
    stored = hash_password("correct horse")
    assert "correct horse" not in stored
    assert password_matches("correct horse", stored)
    assert not password_matches("wrong", stored)
    assert not password_matches("correct horse", "garbage")
    users = tmp_path / "users"
    users.write_text(f"# operators\nalice:{stored}\n\n")
    gate = Gate.from_options(None, users)
    assert gate.login("alice", "correct horse") == "alice"
    assert gate.login("alice", "wrong") is None
    assert gate.login("mallory", "correct horse") is None


def test_bad_users_files_are_refused(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:plaintext\n")
    with pytest.raises(AuthError, match="users:1"):
        read_users(users)
    users.write_text("# nobody\n")
    with pytest.raises(AuthError, match="names no user"):
        read_users(users)
    with pytest.raises(AuthError, match="not both"):
        Gate.from_options("t", users)
    assert Gate.from_options(None, None).token  # one made up


def test_add_user_appends_a_hashed_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    runner = CliRunner()
    for name in ("alice", "bob"):
        result = runner.invoke(
            app, ["console", "--add-user", name, "--users", str(users)], input="pw\npw\n"
        )
        assert result.exit_code == 0, result.output
    lines = [line.split(":", 1) for line in users.read_text().splitlines()]
    assert [name for name, _ in lines] == ["alice", "bob"]
    assert all(stored.startswith("scrypt$") for _, stored in lines)  # never the password
    gate = Gate.from_options(None, users)
    assert gate.login("bob", "pw") == "bob" and gate.login("alice", "pw") == "alice"


# -- the timeline -----------------------------------------------------------------------------


def _entry(seq: int, kind: Kind, **fields: object) -> JournalEntry:
    return JournalEntry(
        instance="o-1", seq=seq, kind=kind.value, at_ms=1_000 + seq, saga_version=1, **fields
    )


def test_timeline_sorts_entries_into_what_happened() -> None:
    action = OperatorAction(action="cancel", by="alice", reason="asked")
    start = OrderPlaced(
        order_id="o-1", customer_id="c", amount_cents=5, card_token="t", postcode="1"
    )
    entries = [
        _entry(0, Kind.SAGA_STARTED, record=start.encode()),
        _entry(1, Kind.COMMAND_SENT, step="payment", attempt=1),
        _entry(2, Kind.INPUT_ACCEPTED, step="payment"),
        _entry(3, Kind.OPERATOR_ACTION, record=action.encode(), reason="cancel by alice: asked"),
        _entry(4, Kind.SAGA_COMPENSATING, reason="cancelled"),
    ]
    items = timeline([Located(10 + e.seq, e) for e in entries])
    assert [i.category for i in items] == ["input", COMMAND, REPLY, OPERATOR, OUTCOME]
    assert items[0].record_type == "OrderPlaced" and '"order_id": "o-1"' in (
        items[0].record_json or ""
    )
    assert items[3].by == "alice" and items[3].offset == 13
    assert items[1].summary == "payment"
    assert category(_entry(5, Kind.BLOCK_STARTED), None) == "flow"


# -- the list's query -------------------------------------------------------------------------


def test_list_query_makes_the_index_filters_and_links() -> None:
    from starlette.datastructures import QueryParams

    query = ListQuery.of(
        QueryParams(
            "status=failed&status=running&q=order-1&field=customer_id%3Dc-7&page=3&step=payment"
        )
    )
    filters = query.filters()
    assert filters.statuses == ("failed", "running")
    assert filters.id_prefix == "order-1" and filters.step == "payment"
    assert [f.path for f in filters.fields] == ["customer_id"]
    assert query.filters(with_status=False).statuses == ()
    assert query.page() == Page(limit=PER_PAGE, offset=2 * PER_PAGE)
    again = ListQuery.of(QueryParams(query.link(page_number=4)))
    assert again.statuses == query.statuses and again.page_number == 4 and again.q == "order-1"
    assert ListQuery.of(QueryParams("page=x")).page_number == 1


# -- the pages --------------------------------------------------------------------------------


def _instance(number: int, status: Status) -> Instance:
    order = f"order-{number:03d}"
    return Instance(
        instance_id=order,
        saga_version=1,
        status=status,
        seq=3,
        started_at_ms=1_000 + number,
        updated_at_ms=2_000 + number,
        reason="shipping: ShippingFailed" if status == Status.COMPENSATED else None,
        steps={},
        completed=(),
        data=OrderState(
            order_id=order, customer_id="c", amount_cents=1, card_token="t", postcode="1"
        ),
    )


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    view = SagaView(DEFINITION, tmp_path, bootstrap=None)
    index = Index(view.index_file)
    statuses = [Status.COMPLETED] * 30 + [Status.COMPENSATED] * 3 + [Status.RUNNING] * 2
    changes = [
        Change(0, n, f"order-{n:03d}", row_of(_instance(n, status), 0))
        for n, status in enumerate(statuses)
    ]
    index.apply(changes)
    index.close()
    settings = Settings(views=[view], gate=Gate(token="tok"), bootstrap=None, feed=False)
    return TestClient(create_app(settings))


def _log_in(client: TestClient) -> None:
    response = client.post("/login", data={"name": "alice", "secret": "tok", "next": "/"})
    assert response.status_code == 200 and "alice" in response.text


def test_pages_need_a_login(client: TestClient) -> None:
    response = client.get("/s/order_fulfillment", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fs%2Forder_fulfillment"
    polled = client.get("/", headers={"HX-Request": "true"}, follow_redirects=False)
    assert polled.status_code == 401 and polled.headers["HX-Redirect"].startswith("/login")
    refused = client.post("/login", data={"name": "alice", "secret": "no", "next": "/"})
    assert "wrong name or secret" in refused.text
    assert (
        client.post("/s/order_fulfillment/act/order-001", follow_redirects=False).status_code == 303
    )


def test_login_never_redirects_elsewhere(client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"name": "a", "secret": "tok", "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_overview_and_list_show_the_index(client: TestClient) -> None:
    _log_in(client)
    overview = client.get("/").text
    assert 'data-testid="count-completed">30<' in overview
    assert 'data-testid="count-running">2<' in overview
    page = client.get("/s/order_fulfillment").text
    assert f"1-{PER_PAGE} of 35" in page and "Next →" in page
    second = client.get("/s/order_fulfillment?page=2", headers={"HX-Request": "true"}).text
    assert "<html" not in second and f"{PER_PAGE + 1}-35 of 35" in second
    oldest = client.get("/s/order_fulfillment?asc=1&sort=started").text
    assert oldest.index(">order-000<") < oldest.index(">order-001<")
    running = client.get("/s/order_fulfillment?status=running").text
    assert running.count('data-testid="instance-link"') == 2
    searched = client.get("/s/order_fulfillment?q=order-03").text
    assert searched.count('data-testid="instance-link"') == 5  # order-030 .. order-034
    wrong = client.get("/s/order_fulfillment?version=x").text
    assert 'data-testid="filter-error"' in wrong
    assert client.get("/s/nope").status_code == 404


def test_an_instance_page_polls_for_nothing_while_its_position_stands(client: TestClient) -> None:
    _log_in(client)
    live = client.get("/s/order_fulfillment/live/order-001?position=2")  # seq 3: position 2
    assert live.status_code == 204  # answered from the index: the journal is not read


def test_a_signal_that_cannot_be_built_says_why_and_sends_nothing(client: TestClient) -> None:
    _log_in(client)
    url = "/s/order_fulfillment/act/order-001"
    cases = {
        ("PaymentCompleted", "{not json"): "not JSON",
        ("PaymentCompleted", '{"nope": 1}'): "PaymentCompleted(",
        ("Nothing", "{}"): "accepts no &#39;Nothing&#39;",
    }
    for (event_type, data), expected in cases.items():
        form = {"action": "signal", "event_type": event_type, "data": data, "reason": "r"}
        sent = client.post(url, data=form, follow_redirects=False)
        assert sent.headers["location"] == "/s/order_fulfillment/i/order-001"
        page = client.get("/").text  # the flash shows on the next page (this one needs no Kafka)
        assert 'data-testid="flash"' in page and expected in page, page


def test_index_finds_by_id_and_prefix(tmp_path: Path) -> None:
    index = Index(tmp_path / "i.sqlite3")
    index.apply(
        [Change(0, n, f"o-{n}", row_of(_instance(n, Status.RUNNING), 0)) for n in range(12)]
    )
    assert {r.instance for r in index.page(Filters(id_prefix="order-01"), Page())} == {
        "order-010",
        "order-011",
    }
    found = index.find("order-003")
    assert found is not None and found.instance == "order-003"
    assert index.find("order-0") is None
