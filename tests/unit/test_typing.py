"""Sagas are typed so that mypy catches a wrong handler: checked by running mypy for real."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

_SAGA = """
from dataclasses import replace

from examples.order_fulfillment.messages import (
    CreateShippingLabel, MakePayment, OrderPlaced, OrderState, PaymentCompleted, ShippingFailed,
)
from sagas import Saga, Step, evolve


class Typed(Saga, name="typed"):
    start = OrderPlaced
    state = OrderState

    @staticmethod
    def begin(event: OrderPlaced) -> OrderState:
        raise NotImplementedError

    payment = Step(MakePayment, success=PaymentCompleted, build={build})
    shipping = Step(CreateShippingLabel, success=ShippingFailed, next=payment)

    @evolve({evolved})
    def paid(state: OrderState, event: PaymentCompleted) -> OrderState:
        return replace(state, payment_id=event.payment_id)
"""

_GOOD_BUILD = (
    "lambda s: MakePayment(order_id=s.order_id, customer_id='c', amount_cents=1, card_token='t')"
)
_BAD_BUILD = "lambda s: CreateShippingLabel(order_id='', postcode='', customer_id='')"


def _mypy(tmp_path: Path, build: str, evolved: str) -> tuple[int, str]:
    module = tmp_path / "typed_saga.py"
    module.write_text(textwrap.dedent(_SAGA).format(build=build, evolved=evolved))
    out, err, status = api.run(["--strict", "--no-incremental", str(module)])
    return status, out + err


def test_a_well_typed_saga_passes_mypy_without_staticmethod_on_evolvers(tmp_path: Path) -> None:
    status, out = _mypy(tmp_path, _GOOD_BUILD, "PaymentCompleted")
    assert status == 0, out


def test_mypy_catches_an_evolver_for_another_event_and_a_builder_of_another_command(
    tmp_path: Path,
) -> None:
    status, out = _mypy(tmp_path, _BAD_BUILD, "ShippingFailed")
    assert status == 1
    assert 'got "CreateShippingLabel", expected "MakePayment"' in out
    assert '"Callable[[OrderState, PaymentCompleted], OrderState]"' in out
    assert 'expected "Callable[[OrderState, ShippingFailed], OrderState]"' in out
