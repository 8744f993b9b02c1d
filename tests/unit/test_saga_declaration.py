"""Unit tests for ``sagas.saga`` and ``stream_processors.core.model``: declaring and compiling
sagas.

Covers: the example ``OrderFulfillment`` compiles to the expected ``SagaDefinition`` (steps in
order, transitions, compensation, reply roles, evolvers, topics, default command builders); and
each declaration error raises ``DeclarationError`` at class creation with a message naming the
problem (no command, a reply claimed by two steps, a bad key, a command the state cannot build,
a start that is not an Event, no steps, and more), including ``model.validate`` on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from examples.order_fulfillment.messages import (
    CreateShippingLabel,
    MakePayment,
    OrderPlaced,
    OrderState,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    ShippingFailed,
    ShippingLabelCreated,
)
from examples.order_fulfillment.saga import OrderFulfillment
from sagas import Command, Compensate, DeclarationError, Fail, Saga, Step, Wait, evolve, on
from stream_processors.core.model import (
    ChildEnded,
    CommandFailed,
    OperatorAction,
    ReplyRole,
    SagaDefinition,
    Task,
    reply_index,
    validate,
)

ORDER = OrderPlaced(
    order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok", postcode="N1 9GU"
)


def _begin(event: OrderPlaced) -> OrderState:
    return OrderState(
        order_id=event.order_id,
        customer_id=event.customer_id,
        amount_cents=event.amount_cents,
        card_token=event.card_token,
        postcode=event.postcode,
    )


class _OrderSaga:
    """What most sagas below share: OrderPlaced starts them, ``_begin`` makes their state."""

    start = OrderPlaced
    state = OrderState
    begin = staticmethod(_begin)


@pytest.fixture(scope="module")
def notify_command(unit_schema_dir: Path) -> type[Command]:
    """A command with a field (``email``) that ``OrderState`` lacks; declared once per process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGALOG_SCHEMA_PATH", str(unit_schema_dir))

        class Notify(Command, schema="tests.unit.sagas.Notify", topic="notify.commands"):
            order_id: str
            email: str

    return Notify


# --- the example compiles ----------------------------------------------------------------------


def test_example_compiles_to_payment_then_shipping() -> None:
    definition = OrderFulfillment.definition
    assert isinstance(definition, SagaDefinition)
    assert definition.name == "order_fulfillment"
    assert definition.version == 1
    assert definition.start is OrderPlaced
    assert definition.key == "order_id"
    assert definition.state is OrderState
    assert list(definition.tasks) == ["payment", "shipping"]
    assert definition.first == ("payment",)

    payment, shipping = definition.tasks["payment"], definition.tasks["shipping"]
    assert payment.next == ("shipping",)
    assert shipping.next == ()
    assert payment.action.command is MakePayment
    assert payment.action.topic == "payments.commands"
    assert payment.action.success == (PaymentCompleted,)
    assert payment.action.failure == (PaymentFailed,)
    assert payment.compensation is not None
    assert payment.compensation.command is RefundPayment
    assert payment.compensation.success == (PaymentRefunded,)
    assert payment.compensation.failure == ()
    assert shipping.action.command is CreateShippingLabel
    assert shipping.action.topic == "shipping.commands"
    assert shipping.compensation is None


def test_example_reply_roles_evolvers_and_topics() -> None:
    definition = OrderFulfillment.definition
    assert definition.replies == {
        PaymentCompleted: ("payment", ReplyRole.SUCCEEDED),
        PaymentFailed: ("payment", ReplyRole.FAILED),
        PaymentRefunded: ("payment", ReplyRole.COMPENSATED),
        ShippingLabelCreated: ("shipping", ReplyRole.SUCCEEDED),
        ShippingFailed: ("shipping", ReplyRole.FAILED),
    }
    assert set(definition.evolvers) == {PaymentCompleted, ShippingLabelCreated}
    assert definition.handlers == {}
    assert definition.inputs == {
        OrderPlaced,
        *definition.replies,
        CommandFailed,
        OperatorAction,
        ChildEnded,
    }
    assert definition.command_topics() == {"payments.commands", "shipping.commands"}
    assert definition.source_topics() == {"orders.events"}

    # The evolvers are the plain functions, callable as (state, input) -> state.
    state = definition.begin(ORDER)
    paid = definition.evolvers[PaymentCompleted](state, PaymentCompleted("o-1", "pay-7"))
    assert paid == replace(state, payment_id="pay-7")
    assert state.payment_id is None  # evolvers do not mutate


def test_example_default_builders_take_fields_from_the_state() -> None:
    definition = OrderFulfillment.definition
    state = replace(definition.begin(ORDER), payment_id="pay-7")
    assert definition.tasks["payment"].action.build(state) == MakePayment(
        order_id="o-1", customer_id="c-9", amount_cents=4_200, card_token="tok"
    )
    assert definition.tasks["shipping"].action.build(state) == CreateShippingLabel(
        order_id="o-1", postcode="N1 9GU"
    )
    compensation = definition.tasks["payment"].compensation
    assert compensation is not None
    assert compensation.build(state) == RefundPayment(
        order_id="o-1", payment_id="pay-7", amount_cents=4_200
    )


def test_next_and_end_override_the_declaration_order() -> None:
    class Reordered(_OrderSaga, Saga, name="reordered"):
        payment = Step(MakePayment, success=PaymentCompleted, next="shipping")
        refund = Step(RefundPayment, success=PaymentRefunded, build=lambda s: None)
        shipping = Step(CreateShippingLabel, success=ShippingLabelCreated, end=True)

    tasks = Reordered.definition.tasks
    assert tasks["payment"].next == ("shipping",)
    assert tasks["refund"].next == ("shipping",)  # the step declared after it
    assert tasks["shipping"].next == ()
    assert Reordered.definition.first == ("payment",)


# --- declaration errors ------------------------------------------------------------------------


def test_step_without_a_command() -> None:
    with pytest.raises(DeclarationError) as caught:

        class NoCommand(_OrderSaga, Saga, name="no_command"):
            payment = Step(None, success=PaymentCompleted)

    message = str(caught.value)
    assert "step 'payment'" in message
    assert "has no command (got None)" in message


def test_step_whose_command_is_not_a_command_class() -> None:
    with pytest.raises(DeclarationError, match=r"step 'payment': has no command"):

        class EventAsCommand(_OrderSaga, Saga, name="event_as_command"):
            payment = Step(PaymentCompleted, success=PaymentCompleted)  # type: ignore[arg-type]


def test_one_reply_claimed_by_two_steps() -> None:
    with pytest.raises(DeclarationError) as caught:

        class TwoClaims(_OrderSaga, Saga, name="two_claims"):
            payment = Step(MakePayment, success=PaymentCompleted)
            shipping = Step(CreateShippingLabel, success=PaymentCompleted)

    message = str(caught.value)
    assert "saga 'two_claims'" in message
    assert "reply PaymentCompleted is claimed by two steps: 'payment' and 'shipping'" in message


def test_a_step_reply_claimed_twice_by_its_own_compensation() -> None:
    with pytest.raises(DeclarationError, match="PaymentFailed is claimed by two steps"):

        class SelfClash(_OrderSaga, Saga, name="self_clash"):
            payment = Step(
                MakePayment,
                success=PaymentCompleted,
                failure=PaymentFailed,
                compensate=Compensate(
                    RefundPayment,
                    build=lambda s: None,
                    success=PaymentRefunded,
                    failure=PaymentFailed,
                ),
            )


def test_key_field_missing_from_the_start_event() -> None:
    with pytest.raises(DeclarationError) as caught:

        class BadKey(Saga, name="bad_key"):
            start = OrderPlaced
            state = OrderState
            key = "nope"
            begin = staticmethod(_begin)
            payment = Step(MakePayment, success=PaymentCompleted)

    message = str(caught.value)
    assert "key field 'nope' is not a field of the start event OrderPlaced" in message
    assert "order_id" in message  # lists the fields there are


def test_command_the_state_cannot_build_needs_build(notify_command: type[Command]) -> None:
    with pytest.raises(DeclarationError) as caught:

        class CannotBuild(_OrderSaga, Saga, name="cannot_build"):
            alert = Step(notify_command, success=PaymentCompleted)

    message = str(caught.value)
    assert "step 'alert'" in message
    assert "Notify needs field 'email', which OrderState lacks" in message
    assert "build=" in message

    # With build= the same step compiles, and the builder is the one given.
    def build(state: OrderState) -> Command:
        return notify_command(order_id=state.order_id, email="x@example.com")

    class CanBuild(_OrderSaga, Saga, name="can_build"):
        alert = Step(notify_command, success=PaymentCompleted, build=build)

    assert CanBuild.definition.tasks["alert"].action.build is build
    assert CanBuild.definition.tasks["alert"].action.topic == "notify.commands"


def test_compensation_the_state_cannot_build_is_named_as_a_compensation(
    notify_command: type[Command],
) -> None:
    with pytest.raises(
        DeclarationError, match=r"step 'payment' compensation: .*Notify needs field 'email'"
    ):

        class CannotCompensate(_OrderSaga, Saga, name="cannot_compensate"):
            payment = Step(
                MakePayment,
                success=PaymentCompleted,
                compensate=Compensate(notify_command, success=PaymentRefunded),
            )


def test_optional_state_field_into_a_required_command_field_needs_build() -> None:
    # OrderState.payment_id is None until the payment completes; RefundPayment needs one.
    with pytest.raises(
        DeclarationError,
        match=r"step 'refund': OrderState.payment_id may be None but RefundPayment.payment_id",
    ):

        class RefundsBlindly(_OrderSaga, Saga, name="refunds_blindly"):
            refund = Step(RefundPayment, success=PaymentRefunded)


def test_start_that_is_not_an_event() -> None:
    with pytest.raises(DeclarationError, match=r"start must be an Event class, got .*MakePayment"):

        class CommandStart(Saga, name="command_start"):
            start = MakePayment  # type: ignore[assignment]
            state = OrderState
            begin = staticmethod(_begin)
            payment = Step(MakePayment, success=PaymentCompleted)


def test_missing_start() -> None:
    with pytest.raises(DeclarationError, match=r"start must be an Event class, got None"):

        class NoStart(Saga, name="no_start"):
            state = OrderState
            begin = staticmethod(_begin)
            payment = Step(MakePayment, success=PaymentCompleted)


def test_state_that_is_not_a_state() -> None:
    with pytest.raises(DeclarationError, match=r"state must be a State class"):

        class EventState(Saga, name="event_state"):
            start = OrderPlaced
            state = OrderPlaced  # type: ignore[assignment]
            begin = staticmethod(_begin)
            payment = Step(MakePayment, success=PaymentCompleted)


def test_no_steps() -> None:
    with pytest.raises(DeclarationError, match=r"saga 'no_steps'.*declares no steps"):

        class NoSteps(_OrderSaga, Saga, name="no_steps"):
            """Everything but steps."""


def test_no_begin() -> None:
    with pytest.raises(DeclarationError, match=r"needs a begin\(event\) -> state function"):

        class NoBegin(Saga, name="no_begin"):
            start = OrderPlaced
            state = OrderState
            payment = Step(MakePayment, success=PaymentCompleted)


def test_step_without_success_reply() -> None:
    with pytest.raises(DeclarationError, match=r"step 'payment': declares no success reply"):

        class NoSuccess(_OrderSaga, Saga, name="no_success"):
            payment = Step(MakePayment, success=None)


def test_next_to_an_unknown_step() -> None:
    with pytest.raises(DeclarationError, match=r"step 'payment' goes to unknown step 'shiping'"):

        class Typo(_OrderSaga, Saga, name="typo"):
            payment = Step(MakePayment, success=PaymentCompleted, next="shiping")
            shipping = Step(CreateShippingLabel, success=ShippingLabelCreated)


def test_start_event_that_is_also_a_reply() -> None:
    with pytest.raises(DeclarationError, match=r"the start event is also a step's reply"):

        class Loop(_OrderSaga, Saga, name="loop"):
            payment = Step(MakePayment, success=OrderPlaced)


def test_handler_for_a_reply() -> None:
    with pytest.raises(
        DeclarationError, match=r"PaymentFailed has a handler but is already a reply"
    ):

        class HandlesReply(_OrderSaga, Saga, name="handles_reply"):
            payment = Step(MakePayment, success=PaymentCompleted, failure=PaymentFailed)

            @on(PaymentFailed)
            @staticmethod
            def failed(state: OrderState, event: PaymentFailed, now_ms: int) -> Any:
                return [Fail("x")]


def test_two_evolvers_for_one_type() -> None:
    with pytest.raises(DeclarationError, match=r"two evolves functions for PaymentCompleted"):

        class TwoEvolvers(_OrderSaga, Saga, name="two_evolvers"):
            payment = Step(MakePayment, success=PaymentCompleted)

            @evolve(PaymentCompleted)
            @staticmethod
            def one(state: OrderState, event: PaymentCompleted) -> OrderState:
                return state

            @evolve(PaymentCompleted)
            @staticmethod
            def two(state: OrderState, event: PaymentCompleted) -> OrderState:
                return state


# --- the model on its own ----------------------------------------------------------------------


def test_reply_index_refuses_a_type_claimed_twice() -> None:
    tasks = OrderFulfillment.definition.tasks
    clash = dataclasses.replace(
        tasks["shipping"],
        action=dataclasses.replace(tasks["shipping"].action, failure=(PaymentFailed,)),
    )
    assert reply_index([tasks["payment"], tasks["shipping"]])[ShippingFailed] == (
        "shipping",
        ReplyRole.FAILED,
    )
    with pytest.raises(DeclarationError, match="PaymentFailed is claimed by two steps"):
        reply_index([tasks["payment"], clash])


def test_validate_refuses_unknown_first_step() -> None:
    definition = dataclasses.replace(OrderFulfillment.definition, first=("packing",))
    with pytest.raises(DeclarationError, match=r"starts with unknown step 'packing'"):
        validate(definition)


def test_validate_refuses_no_tasks() -> None:
    definition = dataclasses.replace(OrderFulfillment.definition, tasks={}, first=())
    with pytest.raises(DeclarationError, match="declares no steps"):
        validate(definition)


def test_validate_accepts_the_example() -> None:
    validate(OrderFulfillment.definition)
    assert all(isinstance(t, Task) for t in OrderFulfillment.definition.tasks.values())


# --- mistakes refused at import (issue 10) -----------------------------------------------------


@pytest.mark.parametrize("name", ["order fulfillment", "orders/eu", "ß", "x" * 240])
def test_a_saga_name_that_cannot_name_topics_is_refused(name: str) -> None:
    with pytest.raises(DeclarationError, match="topic name"):

        class Named(_OrderSaga, Saga, name=name):
            payment = Step(MakePayment, success=PaymentCompleted)


def test_a_wait_for_an_event_without_topic_or_key_is_refused() -> None:
    with pytest.raises(DeclarationError) as caught:

        class Approving(_OrderSaga, Saga, name="approving"):
            payment = Step(MakePayment, success=PaymentCompleted)
            approval = Wait(success=ShippingLabelCreated, timeout=60)

    message = str(caught.value)
    assert "wait step 'approval'" in message
    assert "ShippingLabelCreated" in message
    assert "topic=" in message and "key=" in message


def test_an_evolver_for_a_type_the_saga_never_receives_is_refused() -> None:
    with pytest.raises(DeclarationError) as caught:

        class Evolving(_OrderSaga, Saga, name="evolving"):
            payment = Step(MakePayment, success=PaymentCompleted)

            @evolve(ShippingLabelCreated)
            @staticmethod
            def labelled(state: OrderState, event: ShippingLabelCreated) -> OrderState:
                return state

    assert "evolver for ShippingLabelCreated" in str(caught.value)
    assert "never receives" in str(caught.value)


def test_only_service_events_may_come_from_source_topics() -> None:
    """Replies and operator actions reach the inbox from workers and the CLI, never routed."""
    definition = OrderFulfillment.definition
    assert definition.source_inputs == {OrderPlaced}
    assert PaymentCompleted in definition.inputs and OperatorAction in definition.inputs
