"""The fulfilment example's services, as Sagalog workers that fail on demand through the data.

Outcomes follow the order's own data, as a real service's would:

- the courier cannot reach postcode ``00000``;
- the stock has no item whose SKU starts with ``GONE-``;
- the payment service declines the card token ``tok_declined``;
- the packers damage every item whose SKU starts with ``DMG-``;
- the invoicing service refuses customer ``cust-blocked``.

Every reference a service returns derives from the step's idempotency key, so every attempt of
a step gets the same one.

    sagas worker examples.control_flow.services:warehouse
    sagas worker examples.control_flow.services:payments
    sagas worker examples.control_flow.services:invoicing
"""

from __future__ import annotations

import hashlib

from examples.control_flow.messages import (
    BookCourier,
    CancelCourier,
    ChargePayment,
    ChargeRefunded,
    CourierBooked,
    CourierCancelled,
    CourierUnavailable,
    InvoiceIssued,
    InvoiceRejected,
    IssueInvoice,
    LineDamaged,
    LinePacked,
    LineUnpacked,
    OutOfStock,
    PackLine,
    PaymentCharged,
    PaymentDeclined,
    RefundCharge,
    ReleaseStock,
    ReserveStock,
    StockReleased,
    StockReserved,
    UnpackLine,
)
from sagas.worker import BusinessError, CommandContext, Worker

UNREACHABLE_POSTCODE = "00000"
MISSING_PREFIX = "GONE-"
DECLINED_CARD = "tok_declined"
DAMAGED_PREFIX = "DMG-"
BLOCKED_CUSTOMER = "cust-blocked"

warehouse = Worker("fulfilment-warehouse")
payments = Worker("fulfilment-payments")
invoicing = Worker("invoicing")


def _reference(prefix: str, key: str) -> str:
    """A stable reference derived from the step's idempotency key: every attempt gets the same."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@warehouse.handles(BookCourier)
def book(command: BookCourier, context: CommandContext) -> CourierBooked:
    if command.postcode == UNREACHABLE_POSTCODE:
        raise BusinessError(CourierUnavailable(order_id=command.order_id, reason="unreachable"))
    return CourierBooked(
        order_id=command.order_id, booking_id=_reference("bk", context.idempotency_key)
    )


@warehouse.handles(CancelCourier)
def cancel_booking(command: CancelCourier, context: CommandContext) -> CourierCancelled:
    return CourierCancelled(order_id=command.order_id, booking_id=command.booking_id)


@warehouse.handles(ReserveStock)
def reserve(command: ReserveStock, context: CommandContext) -> StockReserved:
    missing = [sku for sku in command.lines if sku.startswith(MISSING_PREFIX)]
    if missing:
        raise BusinessError(OutOfStock(order_id=command.order_id, sku=missing[0]))
    return StockReserved(
        order_id=command.order_id, reservation_id=_reference("rsv", context.idempotency_key)
    )


@warehouse.handles(ReleaseStock)
def release(command: ReleaseStock, context: CommandContext) -> StockReleased:
    return StockReleased(order_id=command.order_id, reservation_id=command.reservation_id)


@warehouse.handles(PackLine)
def pack(command: PackLine, context: CommandContext) -> LinePacked:
    if command.sku.startswith(DAMAGED_PREFIX):
        raise BusinessError(LineDamaged(order_id=command.order_id, sku=command.sku))
    parcel = _reference("pcl", context.idempotency_key)
    return LinePacked(order_id=command.order_id, sku=command.sku, parcel_id=parcel)


@warehouse.handles(UnpackLine)
def unpack(command: UnpackLine, context: CommandContext) -> LineUnpacked:
    return LineUnpacked(order_id=command.order_id, sku=command.sku)


@payments.handles(ChargePayment)
def charge(command: ChargePayment, context: CommandContext) -> PaymentCharged:
    if command.card_token == DECLINED_CARD:
        raise BusinessError(PaymentDeclined(order_id=command.order_id, reason="card declined"))
    return PaymentCharged(
        order_id=command.order_id, payment_id=_reference("pay", context.idempotency_key)
    )


@payments.handles(RefundCharge)
def refund(command: RefundCharge, context: CommandContext) -> ChargeRefunded:
    return ChargeRefunded(order_id=command.order_id, payment_id=command.payment_id)


@invoicing.handles(IssueInvoice)
def issue(command: IssueInvoice, context: CommandContext) -> InvoiceIssued:
    if command.customer_id == BLOCKED_CUSTOMER:
        raise BusinessError(InvoiceRejected(invoice_id=command.invoice_id, reason="blocked"))
    number = _reference("inv", context.idempotency_key)
    return InvoiceIssued(invoice_id=command.invoice_id, number=number)
