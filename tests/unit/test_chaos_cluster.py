"""The cluster phase's reading of the cluster (chaos.cluster): what counts as led, what moved."""

from chaos.cluster import View, moves


def view(leaders: dict[tuple[str, int], int], coordinator: int = 1) -> View:
    return View(leaders, 0, {"sagalog.order_fulfillment": coordinator})


def test_a_partition_led_by_a_broker_that_is_down_is_not_led() -> None:
    cluster = view({("a", 0): 1, ("a", 1): 2})
    assert cluster.led(set())
    assert not cluster.led({2})  # killed: metadata names it until the controller fences it
    assert not view({("a", 0): -1}).led(set())
    assert not view({}).led(set())


def test_moves_count_leaders_by_kind_and_name_coordinators() -> None:
    before = view({("orders", 0): 1, ("orders", 1): 2, ("__transaction_state", 0): 1})
    after = view({("orders", 0): 3, ("orders", 1): 2, ("__transaction_state", 0): 2}, 3)
    assert moves(before, after) == {
        "leaders moved": {
            "sagalog topics": "1/2",
            "transaction coordinators (__transaction_state)": "1/1",
        },
        "group coordinators": {"sagalog.order_fulfillment": "1 -> 3"},
    }
