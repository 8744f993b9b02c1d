"""The fulfilment saga: every control-flow construct on one order, and its invoicing child saga.

    FulfilmentRequested
      route (Choice): no lines -> empty (Fail) | express -> courier (BookCourier) | else -> batch
      batch (Sleep 1 s: the standard orders wait for the next pick-up round)
      prepare (Parallel): Stock: reserve (ReserveStock, undone by ReleaseStock)
                        | Payment: charge (ChargePayment, undone by RefundCharge)
      pack (Map over the order's lines, 3 at a time, 1 damaged line tolerated):
            pack_line (PackLine, undone by UnpackLine)
      invoice (Child): the ``invoicing`` saga, one step: IssueInvoice
      done (Succeed)

A failed branch cancels its sibling (awaited if in flight, undone if it succeeded); a second
damaged line fails the map; a refused invoice fails the child saga and so its parent step; each
of those compensates every completed step in reverse order of completion. What each order ends
as follows from its data (``scenario.expected``).

    sagas run examples.control_flow.saga:Invoicing
    sagas run examples.control_flow.saga:Fulfilment
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from examples.control_flow.messages import (
    BookCourier,
    CancelCourier,
    ChargePayment,
    ChargeRefunded,
    CourierBooked,
    CourierCancelled,
    CourierUnavailable,
    FulfilmentRequested,
    FulfilmentState,
    InvoiceIssued,
    InvoiceRejected,
    InvoiceRequested,
    InvoiceState,
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
from sagas import Compensate, Fail, Saga, Step, evolve
from sagas.flow import Branch, Child, Choice, Map, Parallel, Sleep, Succeed, When

#: How long a standard order waits for the next pick-up round (kept short for tests and demos).
BATCH_SECONDS = 1.0
#: Packing lines at once, and damaged lines an order ships without.
PACKERS = 3
TOLERATED_DAMAGED = 1


class Invoicing(Saga, name="invoicing"):
    """The child saga: issue the order's invoice."""

    start = InvoiceRequested
    state = InvoiceState

    @staticmethod
    def begin(event: InvoiceRequested) -> InvoiceState:
        return InvoiceState(
            invoice_id=event.invoice_id,
            order_id=event.order_id,
            customer_id=event.customer_id,
            amount_cents=event.amount_cents,
        )

    issue = Step(IssueInvoice, success=InvoiceIssued, failure=InvoiceRejected)

    @evolve(InvoiceIssued)
    @staticmethod
    def issued(state: InvoiceState, event: InvoiceIssued) -> InvoiceState:
        return replace(state, number=event.number)


def invoice_id(order_id: str) -> str:
    """The child instance of an order: its id starts with the order's."""
    return f"{order_id}-invoice"


def _cancel_booking(state: FulfilmentState) -> CancelCourier:
    assert state.booking_id is not None, "a booked courier has a booking id"
    return CancelCourier(order_id=state.order_id, booking_id=state.booking_id)


def _release(state: FulfilmentState) -> ReleaseStock:
    assert state.reservation_id is not None, "reserved stock has a reservation id"
    return ReleaseStock(order_id=state.order_id, reservation_id=state.reservation_id)


def _refund(state: FulfilmentState) -> RefundCharge:
    assert state.payment_id is not None, "a charged payment has an id"
    return RefundCharge(
        order_id=state.order_id, payment_id=state.payment_id, amount_cents=state.amount_cents
    )


def _pack(state: FulfilmentState, sku: str) -> PackLine:
    return PackLine(order_id=state.order_id, sku=sku)


def _unpack(state: FulfilmentState, sku: str) -> UnpackLine:
    return UnpackLine(order_id=state.order_id, sku=sku)


def _invoice(state: FulfilmentState) -> InvoiceRequested:
    return InvoiceRequested(
        invoice_id=invoice_id(state.order_id),
        order_id=state.order_id,
        customer_id=state.customer_id,
        amount_cents=state.amount_cents,
    )


def _parcels(state: FulfilmentState, results: list[Any]) -> FulfilmentState:
    """The parcels of the packed lines, in line order (a damaged line has none)."""
    return replace(state, parcels=[r.parcel_id for r in results if isinstance(r, LinePacked)])


class Stock(Branch):
    reserve = Step(
        ReserveStock,
        success=StockReserved,
        failure=OutOfStock,
        compensate=Compensate(ReleaseStock, build=_release, success=StockReleased),
    )


class Payment(Branch):
    charge = Step(
        ChargePayment,
        success=PaymentCharged,
        failure=PaymentDeclined,
        compensate=Compensate(RefundCharge, build=_refund, success=ChargeRefunded),
    )


class Packing(Branch):
    pack_line = Step(
        PackLine,
        build=_pack,
        success=LinePacked,
        failure=LineDamaged,
        compensate=Compensate(UnpackLine, build=_unpack, success=LineUnpacked),
    )


class Fulfilment(Saga, name="fulfilment"):
    start = FulfilmentRequested
    state = FulfilmentState

    @staticmethod
    def begin(event: FulfilmentRequested) -> FulfilmentState:
        return FulfilmentState(
            order_id=event.order_id,
            customer_id=event.customer_id,
            amount_cents=event.amount_cents,
            card_token=event.card_token,
            postcode=event.postcode,
            express=event.express,
            lines=list(event.lines),
        )

    route = Choice(
        When(lambda s: not s.lines, "empty"),
        When(lambda s: s.express, "courier"),
        default="batch",
    )
    empty = Fail("an order with no lines")
    courier = Step(
        BookCourier,
        success=CourierBooked,
        failure=CourierUnavailable,
        compensate=Compensate(CancelCourier, build=_cancel_booking, success=CourierCancelled),
        next="prepare",
    )
    batch = Sleep(seconds=BATCH_SECONDS)
    prepare = Parallel(Stock, Payment)
    pack = Map(
        lambda s: s.lines,
        Packing,
        max_concurrency=PACKERS,
        tolerated_failures=TOLERATED_DAMAGED,
        gather=_parcels,
    )
    invoice = Child(Invoicing, input=_invoice)
    done = Succeed()

    @evolve(CourierBooked)
    @staticmethod
    def booked(state: FulfilmentState, event: CourierBooked) -> FulfilmentState:
        return replace(state, booking_id=event.booking_id)

    @evolve(StockReserved)
    @staticmethod
    def reserved(state: FulfilmentState, event: StockReserved) -> FulfilmentState:
        return replace(state, reservation_id=event.reservation_id)

    @evolve(PaymentCharged)
    @staticmethod
    def charged(state: FulfilmentState, event: PaymentCharged) -> FulfilmentState:
        return replace(state, payment_id=event.payment_id)
