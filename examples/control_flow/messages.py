"""The control-flow example's events, commands, replies and saga states.

Each class is bound to its Avro schema in ``schemas/examples/control_flow/`` (written from these
classes with ``sagas schemas export examples.control_flow.messages``): the schema files are the
contract with the warehouse, payment and invoicing services.

The fulfilment saga's services share two command topics (``fulfilment.warehouse`` for the
courier, the stock and the packing; ``fulfilment.payments``); its child saga, ``invoicing``,
sends to ``invoicing.commands``.
"""

from __future__ import annotations

from dataclasses import field

from sagas import Command, Event, State

NS = "sagalog.examples.fulfilment"
WAREHOUSE = "fulfilment.warehouse"
PAYMENTS = "fulfilment.payments"
INVOICES = "invoicing.commands"


class FulfilmentRequested(
    Event, schema=f"{NS}.FulfilmentRequested", topic="fulfilment.requests", key="order_id"
):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str
    postcode: str
    express: bool
    lines: list[str]


class FulfilmentState(State, schema=f"{NS}.FulfilmentState"):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str
    postcode: str
    express: bool
    lines: list[str]
    booking_id: str | None = None
    reservation_id: str | None = None
    payment_id: str | None = None
    parcels: list[str] = field(default_factory=list)


# -- the courier (express orders only) ----------------------------------------------------------


class BookCourier(Command, schema=f"{NS}.BookCourier", topic=WAREHOUSE):
    order_id: str
    postcode: str


class CourierBooked(Event, schema=f"{NS}.CourierBooked"):
    order_id: str
    booking_id: str


class CourierUnavailable(Event, schema=f"{NS}.CourierUnavailable"):
    order_id: str
    reason: str


class CancelCourier(Command, schema=f"{NS}.CancelCourier", topic=WAREHOUSE):
    order_id: str
    booking_id: str


class CourierCancelled(Event, schema=f"{NS}.CourierCancelled"):
    order_id: str
    booking_id: str


# -- stock ----------------------------------------------------------------------------------------


class ReserveStock(Command, schema=f"{NS}.ReserveStock", topic=WAREHOUSE):
    order_id: str
    lines: list[str]


class StockReserved(Event, schema=f"{NS}.StockReserved"):
    order_id: str
    reservation_id: str


class OutOfStock(Event, schema=f"{NS}.OutOfStock"):
    order_id: str
    sku: str


class ReleaseStock(Command, schema=f"{NS}.ReleaseStock", topic=WAREHOUSE):
    order_id: str
    reservation_id: str


class StockReleased(Event, schema=f"{NS}.StockReleased"):
    order_id: str
    reservation_id: str


# -- payment --------------------------------------------------------------------------------------


class ChargePayment(Command, schema=f"{NS}.ChargePayment", topic=PAYMENTS):
    order_id: str
    customer_id: str
    amount_cents: int
    card_token: str


class PaymentCharged(Event, schema=f"{NS}.PaymentCharged"):
    order_id: str
    payment_id: str


class PaymentDeclined(Event, schema=f"{NS}.PaymentDeclined"):
    order_id: str
    reason: str


class RefundCharge(Command, schema=f"{NS}.RefundCharge", topic=PAYMENTS):
    order_id: str
    payment_id: str
    amount_cents: int


class ChargeRefunded(Event, schema=f"{NS}.ChargeRefunded"):
    order_id: str
    payment_id: str


# -- packing, one line at a time ------------------------------------------------------------------


class PackLine(Command, schema=f"{NS}.PackLine", topic=WAREHOUSE):
    order_id: str
    sku: str


class LinePacked(Event, schema=f"{NS}.LinePacked"):
    order_id: str
    sku: str
    parcel_id: str


class LineDamaged(Event, schema=f"{NS}.LineDamaged"):
    order_id: str
    sku: str


class UnpackLine(Command, schema=f"{NS}.UnpackLine", topic=WAREHOUSE):
    order_id: str
    sku: str


class LineUnpacked(Event, schema=f"{NS}.LineUnpacked"):
    order_id: str
    sku: str


# -- the invoicing child saga ---------------------------------------------------------------------


class InvoiceRequested(Event, schema=f"{NS}.InvoiceRequested", key="invoice_id"):
    invoice_id: str
    order_id: str
    customer_id: str
    amount_cents: int


class InvoiceState(State, schema=f"{NS}.InvoiceState"):
    invoice_id: str
    order_id: str
    customer_id: str
    amount_cents: int
    number: str | None = None


class IssueInvoice(Command, schema=f"{NS}.IssueInvoice", topic=INVOICES):
    invoice_id: str
    order_id: str
    customer_id: str
    amount_cents: int


class InvoiceIssued(Event, schema=f"{NS}.InvoiceIssued"):
    invoice_id: str
    number: str


class InvoiceRejected(Event, schema=f"{NS}.InvoiceRejected"):
    invoice_id: str
    reason: str
