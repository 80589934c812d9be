"""``scim-provisioner sso serve``: the SAML 2.0 identity provider's web side (Starlette on
uvicorn, both already in Prefect's dependencies).

Pages: ``/login`` (the directory password), ``/`` (the launcher: the applications the person
is provisioned and active in; one click signs in, IdP-initiated), ``/sso/redirect`` and
``/sso/post`` (SP-initiated AuthnRequests), ``/metadata`` (the IdP's metadata), ``/logout``.
The work is done by :class:`tasks.sso.service.SignOnService`; this module turns requests and
answers into HTTP, with the cookies HttpOnly, SameSite=Lax and Secure behind https.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from tasks.config import Config
from tasks.sso.oidc import Answer, OAuth2Error, WebRequest
from tasks.sso.saml import AuthnRequest, RequestRefused
from tasks.sso.service import (
    OidcAuthorization,
    Pending,
    Refusal,
    Session,
    SignOnService,
    one_line,
)

log = logging.getLogger(__name__)

SESSION_COOKIE = "sso_session"
LOGIN_COOKIE = "sso_login"
MAX_FORM_BYTES = 256 * 1024
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
STYLE = """
body{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0;color:#1c2430}
main{max-width:28rem;margin:4rem auto;background:#fff;border-radius:8px;padding:2rem;
box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0 .2rem}
input[type=text],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}
button{margin-top:1rem;padding:.55rem 1.2rem;border:0;border-radius:4px;background:#2457c5;
color:#fff;font-size:1rem;cursor:pointer}.apps button{width:100%;text-align:left}
.error{background:#fdecea;color:#8a1c12;padding:.7rem;border-radius:4px}
.muted{color:#5b6573;font-size:.9rem}
"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    document = (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}"
        f"</title><meta name=viewport content='width=device-width'><style>{STYLE}</style>"
        f"</head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status, headers=HEADERS)


def refusal_page(refusal: Refusal, status: int | None = None) -> HTMLResponse:
    return page(
        "Sign-in refused",
        f"<p class=error>{html.escape(refusal.reason)}</p>"
        "<p class=muted>If you think this is wrong, ask your administrator.</p>",
        status or refusal.status,
    )


class FormTooBig(Exception):
    """A request body past MAX_FORM_BYTES (refused unread)."""


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value of each); a body past MAX_FORM_BYTES is
    refused as it arrives (FormTooBig), never held."""
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_FORM_BYTES:
        raise FormTooBig
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooBig
    fields: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(key, value)
    return fields


def same(secret: str, given: str) -> bool:
    """Constant-time comparison of a token with what a form sent (any characters)."""
    return secrets.compare_digest(secret.encode("utf-8"), given.encode("utf-8"))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(service: SignOnService) -> Starlette:
    """The IdP's ASGI application over ``service``."""
    secure = service.sso.secure

    def set_session(response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session.token,
            max_age=int(service.sso.session_minutes * 60),
            httponly=True,
            secure=secure,
            samesite="lax",
        )

    def current(request: Request) -> Session | None:
        return service.session(request.cookies.get(SESSION_COOKIE))

    def login_form(request_key: str | None, message: str = "", status: int = 200) -> Response:
        held = service.peek(request_key)
        token = secrets.token_urlsafe(24)
        where = f" to <b>{html.escape(held.label)}</b>" if held else ""
        error = f"<p class=error role=alert>{html.escape(message)}</p>" if message else ""
        body = (
            f"{error}<p class=muted>Sign in{where} with your directory account.</p>"
            "<form method=post action=/login>"
            f"<input type=hidden name=form_token value='{token}'>"
            f"<input type=hidden name=request value='{html.escape(request_key or '')}'>"
            "<label for=login>Login</label>"
            "<input type=text id=login name=login autocomplete=username autofocus required>"
            "<label for=password>Password</label>"
            "<input type=password id=password name=password autocomplete=current-password "
            "required><button type=submit id=sign-in>Sign in</button></form>"
        )
        response = page("Sign in", body, status)
        response.set_cookie(
            LOGIN_COOKIE, token, max_age=900, httponly=True, secure=secure, samesite="lax"
        )
        return response

    async def answer(
        session: Session, request_: AuthnRequest | None, app: str | None = None
    ) -> Response:
        sp = request_.sp if request_ is not None else service.sp(app or "")
        if sp is None:
            return page("Not found", "<p class=error>No such application.</p>", 404)
        result = await run_in_threadpool(service.answer, session, sp, request_)
        if isinstance(result, Refusal):
            return refusal_page(result)
        return HTMLResponse(result, headers=HEADERS)

    def wait_for_sign_in(pending: Pending) -> Response:
        key = service.hold(pending)
        if key is None:
            return refusal_page(
                Refusal("Too many sign-ins are waiting. Try again shortly.", 0, 503)
            )
        return RedirectResponse(f"/login?{urlencode({'request': key})}", 303, headers=HEADERS)

    async def route(request: Request, authn: AuthnRequest) -> Response:
        """Answer a request now, or after a sign-in (ForceAuthn: a fresh one), or (IsPassive
        without a session) with NoPassive."""
        session = current(request)
        if authn.passive and (session is None or authn.force_authn):
            form = await run_in_threadpool(service.idp.no_passive_form, authn)
            return HTMLResponse(form, headers=HEADERS)
        if session is not None and not authn.force_authn:
            return await answer(session, authn)
        return wait_for_sign_in(authn)

    async def sso(request: Request) -> Response:
        binding = "post" if request.method == "POST" else "redirect"
        message = await form_fields(request) if binding == "post" else dict(request.query_params)
        try:
            authn = await run_in_threadpool(service.idp.parse_request, binding, message)
        except RequestRefused as exc:
            reason = one_line(str(exc), 300)
            log.warning("sso: refused a request from %s: %s", client_address(request), reason)
            refusal = await run_in_threadpool(
                service.refuse_request, reason, client_address(request)
            )
            return refusal_page(refusal, 400)
        if binding == "post":
            # a cross-site POST carries no SameSite=Lax cookie: go on in a GET, which does
            key = service.hold(authn)
            if key is None:
                return wait_for_sign_in(authn)
            return RedirectResponse(
                f"/sso/continue?{urlencode({'request': key})}", 303, headers=HEADERS
            )
        return await route(request, authn)

    async def sso_continue(request: Request) -> Response:
        held = service.take(request.query_params.get("request"))
        if not isinstance(held, AuthnRequest):
            return expired()
        return await route(request, held)

    def expired() -> Response:
        return page(
            "Sign-in request expired",
            "<p class=error>This sign-in request expired. Go back to the application and "
            "start again.</p>",
            400,
        )

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return login_form(request.query_params.get("request"))
        fields = await form_fields(request)
        key = fields.get("request") or None
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not token or not same(token, fields.get("form_token", "")):
            return login_form(key, "The sign-in form expired; please sign in again.", 400)
        result = await run_in_threadpool(
            service.sign_in,
            fields.get("login", ""),
            fields.get("password", ""),
            client_address(request),
        )
        if isinstance(result, Refusal):
            return login_form(key, result.reason, result.status)
        held = service.take(key) if key else None
        response: Response
        if isinstance(held, OidcAuthorization):
            response = await authorize(result, held)
        elif held is not None:
            response = await answer(result, held)
        elif key:
            response = expired()
        else:
            response = RedirectResponse("/", 303, headers=HEADERS)
        set_session(response, result)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    async def launcher(request: Request) -> Response:
        session = current(request)
        if session is None:
            return RedirectResponse("/login", 303, headers=HEADERS)
        apps = await run_in_threadpool(service.applications, session)
        buttons = "".join(
            f"<form method=post action='/launch/{html.escape(sp.app)}'>"
            f"<input type=hidden name=csrf value='{session.csrf}'>"
            f"<button type=submit id='launch-{html.escape(sp.app)}'>{html.escape(sp.label)}"
            "</button></form>"
            for sp, admission in apps
            if admission.admitted
        )
        shown = buttons or "<p class=muted>You have no applications to sign in to.</p>"
        body = (
            f"<p>Signed in as <b id=who>{html.escape(session.login)}</b>.</p>"
            f"<div class=apps>{shown}</div>"
            f"<form method=post action=/logout><input type=hidden name=csrf "
            f"value='{session.csrf}'><button type=submit id=sign-out>Sign out</button></form>"
        )
        return page("Your applications", body)

    async def launch(request: Request) -> Response:
        session = current(request)
        fields = await form_fields(request)
        if session is None:
            return RedirectResponse("/login", 303, headers=HEADERS)
        if not same(session.csrf, fields.get("csrf", "")):
            return page("Sign-in refused", "<p class=error>The form expired.</p>", 400)
        return await answer(session, None, request.path_params["app"])

    async def logout(request: Request) -> Response:
        session = current(request)
        fields = await form_fields(request)
        if session is not None and same(session.csrf, fields.get("csrf", "")):
            service.sign_out(session.token)
        response = RedirectResponse("/login", 303, headers=HEADERS)
        response.delete_cookie(SESSION_COOKIE)
        return response

    def oidc_request(request: Request, args: dict[str, str], form: dict[str, str]) -> WebRequest:
        """The request as authlib reads it, at its public URL (``base_url``)."""
        uri = f"{service.sso.base_url}{request.url.path}"
        if request.url.query:
            uri += f"?{request.url.query}"
        return WebRequest(request.method, uri, dict(request.headers), args, form)

    def oidc_answer(answer: Answer) -> Response:
        headers = {**HEADERS, **dict(answer.headers)}
        if answer.status in (301, 302, 303, 307):
            return Response(status_code=answer.status, headers=headers)
        return JSONResponse(answer.body, status_code=answer.status, headers=headers)

    async def authorize(session: Session, held: OidcAuthorization) -> Response:
        result = await run_in_threadpool(service.subject, session, held.client)
        if isinstance(result, Refusal):
            return refusal_page(result)
        request = oidc_request_of(held)
        return oidc_answer(await run_in_threadpool(service.oidc.authorize, request, result))

    def oidc_request_of(held: OidcAuthorization) -> WebRequest:
        uri = f"{service.sso.base_url}/oidc/authorize?{urlencode(held.args)}"
        return WebRequest("GET", uri, {}, dict(held.args), {})

    async def oidc_authorize(request: Request) -> Response:
        args = dict(request.query_params)
        try:
            client = service.oidc.check_authorization(oidc_request(request, args, {}))
        except OAuth2Error as exc:  # never redirected to a URI not yet known to be the client's
            refusal = await run_in_threadpool(
                service.refuse_request,
                f"OIDC {exc.error}: {exc.description or ''}".strip(),
                client_address(request),
            )
            return refusal_page(refusal, 400)
        held = OidcAuthorization(client, args)
        session = current(request)
        if session is not None and args.get("prompt") != "login":
            return await authorize(session, held)
        return wait_for_sign_in(held)

    async def oidc_token(request: Request) -> Response:
        fields = await form_fields(request)
        answer_ = await run_in_threadpool(service.oidc.token, oidc_request(request, {}, fields))
        return oidc_answer(answer_)

    async def oidc_userinfo(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        subject = service.oidc.bearer(token) if scheme.lower() == "bearer" else None
        if subject is not None and not await run_in_threadpool(service.still_admitted, subject):
            subject = None
        if subject is None:
            return JSONResponse(
                {"error": "invalid_token"},
                status_code=401,
                headers={**HEADERS, "WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return JSONResponse(dict(service.oidc.user_info(subject)), headers=HEADERS)

    async def discovery(request: Request) -> Response:
        return JSONResponse(service.oidc.discovery())

    async def jwks(request: Request) -> Response:
        return JSONResponse(service.oidc.jwks())

    async def metadata(request: Request) -> Response:
        return Response(service.idp.metadata(), media_type="application/samlmetadata+xml")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", launcher),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/sso/redirect", sso, methods=["GET"]),
        Route("/sso/post", sso, methods=["POST"]),
        Route("/sso/continue", sso_continue, methods=["GET"]),
        Route("/launch/{app}", launch, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/metadata", metadata),
        Route("/.well-known/openid-configuration", discovery),
        Route("/oidc/authorize", oidc_authorize, methods=["GET"]),
        Route("/oidc/token", oidc_token, methods=["POST"]),
        Route("/oidc/userinfo", oidc_userinfo, methods=["GET", "POST"]),
        Route("/oidc/jwks", jwks),
        Route("/healthz", health),
    ]
    app = Starlette(routes=routes)

    async def failing_closed(request: Request, exc: Exception) -> Response:
        log.error(
            "sso: %s on %s: %s", type(exc).__name__, request.url.path, one_line(str(exc), 300)
        )
        if request.url.path.startswith("/oidc/"):
            return JSONResponse({"error": "temporarily_unavailable"}, status_code=503)
        return page(
            "Sign-in unavailable",
            "<p class=error>Sign-in cannot be completed right now. Try again later.</p>",
            503,
        )

    async def too_big(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("request too large", status_code=413)

    handler: Callable[[Request, Exception], Awaitable[Response]] = failing_closed
    app.add_exception_handler(Exception, handler)
    app.add_exception_handler(FormTooBig, too_big)
    return app


def serve(config: Config) -> int:
    """Run the IdP until interrupted (one process: sessions live in its memory)."""
    import uvicorn

    service = SignOnService(config)
    sso = service.sso
    options: dict[str, Any] = {}
    if sso.tls_cert is not None:
        options = {"ssl_certfile": str(sso.tls_cert), "ssl_keyfile": str(sso.tls_key)}
    print(
        f"sso: identity provider {sso.entity_id} at {sso.base_url} "
        f"(listening on {sso.host}:{sso.port}); applications: "
        + ", ".join(f"{sp.label} ({sp.entity_id})" for sp in service.sps),
        flush=True,
    )
    try:
        uvicorn.run(
            create_app(service),
            host=sso.host,
            port=int(sso.port or 8443),
            log_level="warning",
            access_log=False,
            proxy_headers=bool(sso.trusted_proxies),
            forwarded_allow_ips=",".join(sso.trusted_proxies) or None,
            **options,
        )
    finally:
        service.close()
    return 0
