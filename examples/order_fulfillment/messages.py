"""The order fulfilment example's events, commands, replies and saga state.

Each class is bound to its Avro schema in ``schemas/examples/orders/``: the schema files are the
contract with the payment and shipping services, whatever language those are written in.
"""

from __future__ import annotations

from sagas import Command, Event, State

NS = "sagalog.examples.orders"


class OrderPlaced(Event, schema=f"{NS}.OrderPlaced", topic="orders.events", key="order_id"):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str
    postcode: str


class MakePayment(Command, schema=f"{NS}.MakePayment", topic="payments.commands"):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str


class PaymentCompleted(Event, schema=f"{NS}.PaymentCompleted"):
    order_id: str
    payment_id: str


class PaymentFailed(Event, schema=f"{NS}.PaymentFailed"):
    order_id: str
    reason: str


class RefundPayment(Command, schema=f"{NS}.RefundPayment", topic="payments.commands"):
    order_id: str
    payment_id: str
    amount_cents: int


class PaymentRefunded(Event, schema=f"{NS}.PaymentRefunded"):
    order_id: str
    payment_id: str


class CreateShippingLabel(Command, schema=f"{NS}.CreateShippingLabel", topic="shipping.commands"):
    order_id: str
    postcode: str


class ShippingLabelCreated(Event, schema=f"{NS}.ShippingLabelCreated"):
    order_id: str
    tracking_number: str


class ShippingFailed(Event, schema=f"{NS}.ShippingFailed"):
    order_id: str
    reason: str


class OrderState(State, schema=f"{NS}.OrderState"):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str
    postcode: str
    payment_id: str | None = None
    tracking_number: str | None = None
