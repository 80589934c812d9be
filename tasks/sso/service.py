"""The identity provider's work, apart from HTTP: sign-in, sessions, who gets into which
application, the SAML answers and the audit log.

Every decision reads the state store afresh (a person deprovisioned a minute ago is refused
now, whatever their session says), and every sign-in and refusal is one audit entry: target
``(sso)`` for the password check, the application's target name for each assertion.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tasks import expressions
from tasks.config import NAME_ID_FORMATS, Config, TargetConfig
from tasks.errors import ConfigError, SourceError
from tasks.ldap.authenticate import check_password, login_attribute, read_person
from tasks.ldap.extract import SourceUser
from tasks.sso.keys import ensure_signing_pair
from tasks.sso.oidc import OidcClient, OpenIdProvider, Subject
from tasks.sso.policy import Admission, admit
from tasks.sso.saml import AuthnRequest, IdentityProvider, ServiceProvider, sp_entity_id
from tasks.sso.throttle import Throttle
from tasks.state.store import AuditEntry, Outcome, StateStore
from tasks.sync.transform import evaluate

log = logging.getLogger(__name__)

IDP_TARGET = "(sso)"
"""The audit log's target for password checks (not tied to one application)."""
PENDING_SECONDS = 600
"""How long a request waits for the person to sign in."""
MAX_PENDING = 20_000
"""Requests waiting for a sign-in at most; past it new ones are refused (fail closed)."""
MAX_SESSIONS = 100_000
"""Sessions at most (expired ones are dropped first)."""


@dataclass(slots=True)
class Session:
    """A signed-in person at the IdP (kept in memory; the cookie holds only its token)."""

    token: str
    login: str
    person: SourceUser
    expires: float
    signed_in_at: float = field(default_factory=time.time)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A sign-in turned away: the reason shown, seconds to wait when throttled, the HTTP
    status of the page (401 wrong password, 403 not admitted, 429 throttled, 503 a part
    unreachable)."""

    reason: str
    wait: float = 0.0
    status: int = 403


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def one_line(text: str, limit: int) -> str:
    """Text from a request or a library, made safe for a log line or an audit cause."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def read_metadata(target: TargetConfig) -> str:
    """An application's SP metadata, from its file or URL; one line naming it on failure."""
    assert target.sso is not None and target.sso.sp_metadata is not None
    location = target.sso.sp_metadata
    where = f"targets[{target.name}].sso.sp_metadata ({location})"
    if target.sso.metadata_url():
        try:
            response = requests.get(location, timeout=30, allow_redirects=False)
        except requests.RequestException as exc:
            raise ConfigError(f"{where}: cannot fetch it: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ConfigError(f"{where}: answered HTTP {response.status_code}")
        return response.text
    try:
        return Path(location).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None


def service_providers(config: Config) -> list[ServiceProvider]:
    """Each target with an ``sso`` block as a SAML service provider."""
    sps = []
    for target in config.targets:
        if target.sso is None or target.sso.sp_metadata is None:
            continue
        metadata = read_metadata(target)
        where = f"targets[{target.name}].sso.sp_metadata"
        try:
            entity, signs = sp_entity_id(metadata, where)
        except ConfigError:
            raise
        except Exception as exc:  # pysaml2 raises many kinds on malformed XML
            raise ConfigError(f"{where}: not valid SAML metadata ({type(exc).__name__})") from None
        required = target.sso.require_signed_requests
        sps.append(
            ServiceProvider(
                app=target.name,
                label=target.sso.label or target.name,
                entity_id=entity,
                metadata=metadata,
                require_signed_requests=signs if required is None else required,
                name_id_format=NAME_ID_FORMATS[target.sso.name_id_format],
            )
        )
    entities = [sp.entity_id for sp in sps]
    doubled = sorted({e for e in entities if entities.count(e) > 1})
    if doubled:
        raise ConfigError(f"sso: two targets share the SP entity id {doubled[0]}")
    return sps


@dataclass(frozen=True, slots=True)
class OidcAuthorization:
    """An OIDC authorization request waiting for the person to sign in (already validated)."""

    client: OidcClient
    args: dict[str, str]

    @property
    def label(self) -> str:
        return self.client.label


Pending = AuthnRequest | OidcAuthorization
"""A sign-in request held while the person signs in."""


def oidc_clients(config: Config) -> list[OidcClient]:
    """Each target with an ``sso.oidc`` block as an OpenID Connect client (secrets read now)."""
    clients = []
    for target in config.targets:
        if target.sso is None or target.sso.oidc is None:
            continue
        oidc = target.sso.oidc
        secret = oidc.client_secret.resolve().get_secret_value() if oidc.client_secret else None
        clients.append(
            OidcClient(
                target.name,
                target.sso.label or target.name,
                oidc.client_id,
                secret,
                tuple(oidc.redirect_uris),
            )
        )
    ids = [c.client_id for c in clients]
    doubled = sorted({i for i in ids if ids.count(i) > 1})
    if doubled:
        raise ConfigError(f"sso: two targets share the OIDC client_id {doubled[0]}")
    return clients


class SignOnService:
    """Sign-in, sessions, admission and answers for one IdP; thread-safe."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        sso = config.sso
        if sso is None:
            raise ConfigError("sso: the config has no sso section (docs/sso.md)")
        self.config = config
        self.sso = sso
        self.sps = service_providers(config)
        self.targets = {t.name: t for t in config.targets if t.sso is not None}
        if not self.targets:
            raise ConfigError("sso: no target has an sso block, so there is nothing to sign in to")
        made = ensure_signing_pair(sso.signing_key, sso.signing_cert, str(sso.entity_id))
        if made:
            log.warning(
                "sso: made a new signing key %s and certificate %s",
                sso.signing_key,
                sso.signing_cert,
            )
        self.idp = IdentityProvider(
            entity_id=str(sso.entity_id),
            base_url=sso.base_url,
            key_file=str(sso.signing_key),
            cert_file=str(sso.signing_cert),
            sps=self.sps,
            assertion_minutes=sso.assertion_minutes,
        )
        self.oidc = OpenIdProvider(sso.base_url, sso.signing_key, oidc_clients(config))
        self.store = StateStore(config.state.url)
        self.login_attribute = login_attribute(config.source, sso.login_attribute)
        self.released = {
            a
            for t in self.targets.values()
            if t.sso
            for e in t.sso.attributes.values()
            for a in expressions.attributes(e)
        }
        limits = sso.throttle
        self.clock = clock
        self.throttle = Throttle(
            limits.failures_per_user, limits.failures_per_address, limits.window_minutes * 60, clock
        )
        self._sessions: dict[str, Session] = {}
        self._pending: dict[str, tuple[Pending, float]] = {}
        self._lock = threading.Lock()

    # -- sign-in ---------------------------------------------------------------------

    def sign_in(self, login: str, password: str, address: str) -> Session | Refusal:
        """Check a password against the directory (throttled); a session when right."""
        login = login.strip()[:256]
        wait = self.throttle.attempt(login, address)
        if wait > 0:
            self._audit(
                IDP_TARGET,
                "sign-in",
                "",
                login,
                "refused",
                f"too many failed attempts (from {address})",
            )
            minutes = max(1, round(wait / 60))
            return Refusal(
                f"Too many failed attempts. Try again in {minutes} minute(s).", wait, 429
            )
        try:
            result = check_password(
                self.config.source, self.login_attribute, login, password, self.released
            )
        except SourceError as exc:
            self.throttle.cancel(login, address)  # not the person's failure
            log.error("sso: the directory could not check a password: %s", exc)
            self._audit(IDP_TARGET, "sign-in", "", login, "failed", f"directory: {exc}")
            return Refusal("The directory cannot be reached right now. Try again later.", 0, 503)
        if result.outcome != "ok" or result.user is None:  # the attempt stays counted
            cause = {
                "unknown": "no such login",
                "wrong_password": "wrong password",
                "ambiguous": "the login names several entries",
            }[result.outcome]
            source_id = result.user.source_id if result.user else ""
            # what was typed as a login that names nobody may be a password: only its digest
            name = login if result.user else f"unknown login #{_digest(login)}"
            self._audit(
                IDP_TARGET, "sign-in", source_id, name, "refused", f"{cause} (from {address})"
            )
            return Refusal("Wrong login or password.", 0, 401)
        self.throttle.forgive(login, address)
        self._audit(IDP_TARGET, "sign-in", result.user.source_id, login, "ok", f"from {address}")
        session = Session(
            secrets.token_urlsafe(32),
            login,
            result.user,
            self.clock() + self.sso.session_minutes * 60,
        )
        with self._lock:
            now = self.clock()
            if len(self._sessions) >= MAX_SESSIONS:
                for token, old in list(self._sessions.items()):
                    if old.expires <= now:
                        del self._sessions[token]
            if len(self._sessions) >= MAX_SESSIONS:
                return Refusal("Too many people are signed in right now. Try again later.", 0, 503)
            self._sessions[session.token] = session
        return session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, if any."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires <= self.clock():
                del self._sessions[token]
                return None
            return session

    def sign_out(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)

    # -- requests waiting for a sign-in ----------------------------------------------

    def hold(self, request: Pending) -> str | None:
        """Keep an accepted request while the person signs in; its key goes in the form (None:
        too many are waiting)."""
        key = secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock:
            while self._pending and next(iter(self._pending.values()))[1] < now - PENDING_SECONDS:
                del self._pending[next(iter(self._pending))]
            if len(self._pending) >= MAX_PENDING:
                return None
            self._pending[key] = (request, now)
        return key

    def take(self, key: str | None) -> Pending | None:
        """The request held under ``key`` (once)."""
        with self._lock:
            held = self._pending.pop(key or "", None)
        if held is None or held[1] < self.clock() - PENDING_SECONDS:
            return None
        return held[0]

    def peek(self, key: str | None) -> Pending | None:
        with self._lock:
            held = self._pending.get(key or "")
        if held is None or held[1] < self.clock() - PENDING_SECONDS:
            return None
        return held[0]

    # -- admission and answers -------------------------------------------------------

    def person_now(self, session: Session) -> SourceUser | None:
        """The signed-in person's entry as the directory has it now (None: deleted).

        :raises SourceError: the directory is unreachable (the page says sign-in is
            unavailable; nothing is asserted).
        """
        return read_person(self.config.source, session.person.dn, self.released)

    def admission(self, app: str, person: SourceUser | None) -> Admission:
        """Whether the person gets into ``app`` now: the state store read afresh, and their
        directory entry as read now (``person``; None when it is gone)."""
        target = self.targets[app]
        assert target.sso is not None
        label = target.sso.label or app
        if person is None:
            return Admission(app, False, reason="your directory account no longer exists")
        record = self.store.records_of(app, [person.source_id]).get(person.source_id)
        return admit(app, label, person, record, target.sso.name_id)

    def applications(self, session: Session) -> list[tuple[ServiceProvider, Admission]]:
        """Every SAML application with the person's admission to it (the launcher)."""
        person = self.person_now(session)
        return [(sp, self.admission(sp.app, person)) for sp in self.sps]

    def _decide(self, session: Session, app: str, how: str) -> tuple[Admission, SourceUser]:
        """Admission to ``app`` now; a refusal is audited here, an admission by the caller
        once its answer is made."""
        person = self.person_now(session)
        decision = self.admission(app, person)
        if not decision.admitted or decision.name_id is None or person is None:
            self._audit(
                app,
                "sso",
                session.person.source_id,
                session.login,
                "refused",
                f"{how}: {decision.reason}",
                decision.scim_id,
            )
        return decision, person or session.person

    def answer(
        self, session: Session, sp: ServiceProvider, request: AuthnRequest | None
    ) -> str | Refusal:
        """The auto-posting form with a signed assertion for ``sp``, or the refusal; audited."""
        how = "SP-initiated" if request is not None else "IdP-initiated"
        decision, person = self._decide(session, sp.app, how)
        if not decision.admitted or decision.name_id is None:
            return Refusal(f"You cannot sign in to {sp.label}: {decision.reason}.")
        form = self.idp.response_form(
            sp, decision.name_id, self.attributes(sp.app, person), request=request
        )
        self._audit(
            sp.app,
            "sso",
            person.source_id,
            session.login,
            "ok",
            f"{how}: NameID {decision.name_id}",
            decision.scim_id,
        )
        return form

    def subject(self, session: Session, client: OidcClient) -> Subject | Refusal:
        """The OIDC subject (``sub`` = the provisioned value) for ``client``, or the refusal;
        audited as a SAML answer is."""
        decision, person = self._decide(session, client.app, "OIDC")
        if not decision.admitted or decision.name_id is None:
            return Refusal(f"You cannot sign in to {client.label}: {decision.reason}.")
        claims = {
            name: values[0] if len(values) == 1 else values
            for name, values in self.attributes(client.app, person).items()
        }
        self._audit(
            client.app,
            "sso",
            person.source_id,
            session.login,
            "ok",
            f"OIDC: sub {decision.name_id}",
            decision.scim_id,
        )
        return Subject(
            person.source_id,
            session.login,
            client.app,
            decision.name_id,
            claims,
            int(session.signed_in_at),
        )

    def still_admitted(self, subject: Subject) -> bool:
        """Whether the person of a token is still provisioned and active in its application
        (userinfo asks again; the directory's status is the one seen at sign-in)."""
        record = self.store.records_of(subject.app, [subject.source_id]).get(subject.source_id)
        return record is not None and record.status == "active"

    def attributes(self, app: str, person: SourceUser) -> dict[str, list[str]]:
        """The attributes released to ``app``, from the person's directory entry."""
        target = self.targets[app]
        assert target.sso is not None
        values = {name: evaluate(expr, person) for name, expr in target.sso.attributes.items()}
        return {name: found for name, found in values.items() if found}

    def sp(self, app: str) -> ServiceProvider | None:
        return next((sp for sp in self.sps if sp.app == app), None)

    def refuse_request(self, reason: str, address: str) -> Refusal:
        """A sign-in request turned away before anyone signed in; audited."""
        self._audit(IDP_TARGET, "sso", "", "", "refused", f"{reason} (from {address})")
        return Refusal(f"This sign-in request is refused: {one_line(reason, 300)}.", 0, 400)

    def _audit(
        self,
        target: str,
        action: str,
        source_id: str,
        name: str,
        outcome: Outcome,
        cause: str,
        scim_id: str | None = None,
    ) -> None:
        """One audit entry; when it cannot be written, the sign-in fails (closed)."""
        entry = AuditEntry(
            "user", action, source_id, one_line(name, 200), scim_id, outcome, one_line(cause, 500)
        )
        self.store.audit(target, [entry])

    def close(self) -> None:
        self.store.close()
