"""The console's web application (Starlette, Jinja2 templates, htmx): pages, login, actions.

Pages render whole on a normal request and only their live part on an htmx request (the
``HX-Request`` header): the overview's counts, the list's table and an instance's body poll
themselves every few seconds, so they update without reloading. An instance's body is sent
again only when its journal position moved (otherwise 204: htmx keeps what it shows).

Every page needs a login (``sagas.console.auth``); the user's name is kept in a signed session
cookie (``SameSite=Lax``, so another site cannot post a form with it) whose key is made at
start, so a restart logs everyone out. Operator actions go out with that name as their ``by``.

The endpoints are plain functions: Starlette runs them in its thread pool, as the Kafka and
SQLite calls behind them block.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from confluent_kafka import KafkaException
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from sagas.cli.app import format_time
from sagas.console.auth import Gate
from sagas.console.data import Feeds, SagaView
from sagas.console.timeline import CATEGORIES
from sagas.operator import ACTIONS, OperatorError
from stream_processors.kafka.errors import KafkaUnavailable, MissingTopic
from stream_processors.tools.index import STATUSES, FilterError, Filters, Page, parse_where

LOG = logging.getLogger(__name__)
#: Rows of the instance list per page.
PER_PAGE = 25
#: Seconds between the polls of an instance page, and of the overview and the list (whose
#: counts read the whole status index: about 0.2 s at 1,000,000 instances).
POLL_SECONDS = 2
LIST_POLL_SECONDS = 5
#: What reading an instance's journal may raise when Kafka cannot answer it now.
UNREADABLE = (KafkaException, KafkaUnavailable, MissingTopic, TimeoutError)


@dataclass(frozen=True)
class Settings:
    """What a console serves and who may use it."""

    views: list[SagaView]
    gate: Gate
    bootstrap: str | None
    #: Keep the indexes fed (off in tests of the pages alone).
    feed: bool = True


def _templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("sagas.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["quote"] = lambda text: quote(str(text), safe="")
    environment.filters["utc"] = format_time
    environment.globals |= {
        "STATUSES": STATUSES,
        "ACTIONS": ACTIONS,
        "CATEGORIES": CATEGORIES,
        "POLL_SECONDS": POLL_SECONDS,
        "LIST_POLL_SECONDS": LIST_POLL_SECONDS,
        "PER_PAGE": PER_PAGE,
    }
    return Jinja2Templates(env=environment)


TEMPLATES = _templates()


def _htmx(request: Request) -> bool:
    """An htmx request for a page's live part (a history restore wants the whole page)."""
    headers = request.headers
    return headers.get("HX-Request") == "true" and "HX-History-Restore-Request" not in headers


def _flash(request: Request, message: str, ok: bool = True) -> None:
    request.session["flash"] = {"message": message, "ok": ok}


class Console:
    """The endpoints, around the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.views = {view.name: view for view in settings.views}

    # -- plumbing ----------------------------------------------------------------------------

    def render(self, request: Request, name: str, **context: Any) -> Response:
        context |= {
            "user": request.session.get("user"),
            # Only a whole page shows the flash: a poll's fragment must not take it.
            "flash": None if _htmx(request) else request.session.pop("flash", None),
            "sagas": list(self.views),
        }
        return TEMPLATES.TemplateResponse(request, name, context)

    def view(self, request: Request) -> SagaView:
        name = request.path_params["saga"]
        if name not in self.views:
            raise HTTPException(404, f"no saga {name!r} in this console")
        return self.views[name]

    # -- login -------------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        return self.render(
            request,
            "login.html",
            token=self.settings.gate.token is not None,
            next=request.query_params.get("next", "/"),
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name = self.settings.gate.login(_text(form, "name"), _text(form, "secret"))
        target = _text(form, "next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only pages of this console: never a redirect elsewhere
        if name is None:
            _flash(request, "wrong name or secret", ok=False)
            return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
        request.session["user"] = name
        return RedirectResponse(target, 303)

    def logout(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", 303)

    # -- pages -------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        counts = {name: view.counts() for name, view in self.views.items()}
        template = "_overview.html" if _htmx(request) else "overview.html"
        return self.render(request, template, counts=counts)

    def instances(self, request: Request) -> Response:
        view = self.view(request)
        query = ListQuery.of(request.query_params)
        try:
            rows = view.rows(query.filters(), query.page())
            # One count, by status, serves both the summary and the total (at 1,000,000
            # instances a count reads the status index: ~0.2 s here).
            counts = view.counts(query.filters(with_status=False))
            shown = tuple(dict.fromkeys(query.statuses)) or tuple(counts)
            total = sum(counts.get(status, 0) for status in shown)
            error = None
        except FilterError as problem:
            rows, total, counts, error = [], 0, {}, str(problem)
        context = {
            "view": view,
            "query": query,
            "rows": rows,
            "total": total,
            "counts": counts,
            "error": error,
        }
        template = "_instances.html" if _htmx(request) else "instances.html"
        return self.render(request, template, **context)

    def instance(self, request: Request) -> Response:
        view = self.view(request)
        instance = request.path_params["instance"]
        try:
            detail = view.detail(instance)
        except UNREADABLE as error:
            raise HTTPException(503, f"cannot read {view.topics.journal} now: {error}") from error
        if detail is None:
            raise HTTPException(404, f"{view.name} has no instance {instance!r}")
        return self.render(request, "instance.html", view=view, detail=detail)

    def live(self, request: Request) -> Response:
        """An instance's body again, or 204 when its journal position has not moved."""
        view = self.view(request)
        instance = request.path_params["instance"]
        listed = view.find(instance)
        shown = request.query_params.get("position")
        if listed is not None and shown == str(listed.position):
            return Response(status_code=204)
        try:
            detail = view.detail(instance)
        except UNREADABLE:
            return Response(status_code=204)  # the next poll tries again
        if detail is None:
            return Response(status_code=204)
        return self.render(request, "_instance_body.html", view=view, detail=detail)

    def instance_dead_letters(self, request: Request) -> Response:
        view = self.view(request)
        letters = view.dead_letters_of(request.path_params["instance"])
        return self.render(request, "_dead_letters.html", view=view, letters=letters, pick=False)

    def dlq(self, request: Request) -> Response:
        view = self.view(request)
        topics = {topic: view.dead_letters(topic) for topic in view.dlq_topics()}
        return self.render(request, "dlq.html", view=view, topics=topics)

    # -- actions -----------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        view = self.view(request)
        instance = request.path_params["instance"]
        form = await request.form()
        action, reason = _text(form, "action"), _text(form, "reason")
        user = request.session["user"]
        if action == "signal":
            event_type, data = _text(form, "event_type"), _text(form, "data")
            sender = partial(view.signal, instance, event_type, data, user, reason)
        else:
            sender = partial(view.act, instance, action, user, reason)
        await _run_reporting(request, sender, f"{action} of {instance}")
        LOG.info("%s: %s of %s in %s: %s", user, action, instance, view.name, reason)
        return RedirectResponse(f"/s/{quote(view.name)}/i/{quote(instance, safe='')}", 303)

    async def redrive(self, request: Request) -> Response:
        view = self.view(request)
        form = await request.form()
        topic = _text(form, "topic")
        try:
            chosen = {_position(text) for text in form.getlist("letter") if isinstance(text, str)}
        except ValueError:
            chosen = set()
        if not chosen:
            _flash(request, "choose the dead letters to send back", ok=False)
        else:
            user = request.session["user"]
            LOG.info("%s: redrive of %d dead letters of %s", user, len(chosen), topic)
            await _run_reporting(request, lambda: view.redrive(topic, chosen), f"redrive {topic}")
        return RedirectResponse(f"/s/{quote(view.name)}/dlq", 303)


async def _run_reporting(request: Request, call: Callable[[], Any], what: str) -> None:
    """Run a blocking operator call in the thread pool and flash what came of it."""
    try:
        outcome = await run_in_threadpool(call)
    except (OperatorError, ValueError) as error:
        _flash(request, f"{what}: {error}", ok=False)
        return
    if isinstance(outcome, int):
        _flash(request, f"{what}: sent {outcome} back")
    else:  # the processor's verdict: applied, refused (and why), or none in time
        _flash(request, outcome.describe(), ok=outcome.ok)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _position(text: str) -> tuple[int, int]:
    partition, _, offset = text.partition(":")
    return int(partition), int(offset)


@dataclass(frozen=True)
class ListQuery:
    """The instance list's query string: filters, sort and page, as the form sends them."""

    statuses: tuple[str, ...] = ()
    step: str = ""
    q: str = ""
    reason: str = ""
    version: str = ""
    field: str = ""
    started_after: str = ""
    updated_after: str = ""
    sort: str = "updated"
    asc: bool = False
    page_number: int = 1

    @classmethod
    def of(cls, params: QueryParams) -> ListQuery:
        def one(name: str) -> str:
            return params.get(name, "").strip()

        try:
            number = max(1, int(one("page") or 1))
        except ValueError:
            number = 1
        return cls(
            statuses=tuple(s for s in params.getlist("status") if s),
            step=one("step"),
            q=one("q"),
            reason=one("reason"),
            version=one("version"),
            field=one("field"),
            started_after=one("started_after"),
            updated_after=one("updated_after"),
            sort=one("sort") or "updated",
            asc=one("asc") == "1",
            page_number=number,
        )

    def filters(self, with_status: bool = True) -> Filters:
        """The index's ``Filters``, through the same ``NAME=VALUE`` parser as ``--where``."""
        from sagas.cli.listing import moment  # the CLI's reading of times: ISO, ms, 30m

        items = [f"status={s}" for s in self.statuses] if with_status else []
        for name, value in (
            ("step", self.step),
            ("id-prefix", self.q),
            ("reason", self.reason),
            ("version", self.version),
            ("started-after", self.started_after),
            ("updated-after", self.updated_after),
        ):
            if value:
                items.append(f"{name}={value}")
        if self.field:
            items.append(f"data.{self.field}")
        return parse_where(items, moment)

    def page(self) -> Page:
        offset = (self.page_number - 1) * PER_PAGE
        return Page(sort=self.sort, descending=not self.asc, limit=PER_PAGE, offset=offset)

    def link(self, **changes: Any) -> str:
        """This query's string with ``changes`` (``page_number=3``)."""
        values = {**self.__dict__, **changes}
        pairs: list[tuple[str, str]] = [("status", s) for s in values["statuses"]]
        for name in ("step", "q", "reason", "version", "field", "started_after", "updated_after"):
            if values[name]:
                pairs.append((name, values[name]))
        pairs += [("sort", values["sort"]), ("page", str(values["page_number"]))]
        if values["asc"]:
            pairs.append(("asc", "1"))
        return urlencode(pairs)


class _LoginRequired:
    """ASGI middleware: a request without a logged-in user goes to the login page (htmx
    requests get 401 and ``HX-Redirect``, so a poll after a restart lands there too)."""

    OPEN = ("/login", "/static/")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.OPEN):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if request.session.get("user"):
            await self.app(scope, receive, send)
            return
        target = "/login?" + urlencode({"next": scope["path"]})
        if _htmx(request):
            response: Response = Response(status_code=401, headers={"HX-Redirect": target})
        else:
            response = RedirectResponse(target, 303)
        await response(scope, receive, send)


def create_app(settings: Settings) -> Starlette:
    """The console's ASGI application; with ``settings.feed``, it feeds the indexes while up."""
    console = Console(settings)
    feeds = Feeds(settings.views, settings.bootstrap)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if settings.feed:
            feeds.start()
        try:
            yield
        finally:
            feeds.stop()

    saga = "/s/{saga}"
    routes = [
        Route("/login", console.login_page, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/", console.overview),
        Route(saga, console.instances),
        Route(f"{saga}/dlq", console.dlq),
        Route(f"{saga}/dlq/redrive", console.redrive, methods=["POST"]),
        Route(saga + "/i/{instance:path}", console.instance),
        Route(saga + "/live/{instance:path}", console.live),
        Route(saga + "/dead/{instance:path}", console.instance_dead_letters),
        Route(saga + "/act/{instance:path}", console.act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(files("sagas.console") / "static"))),
    ]
    middleware = [
        Middleware(SessionMiddleware, secret_key=secrets.token_hex(32), same_site="lax"),
        Middleware(_LoginRequired),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
