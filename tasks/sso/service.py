"""The identity provider's work, apart from HTTP: sign-in, sessions, who gets into which
application, the SAML answers and the audit log.

Every decision reads the state store afresh (a person deprovisioned a minute ago is refused
now, whatever their session says), and every sign-in and refusal is one audit entry: target
``(sso)`` for the password check, the application's target name for each assertion.
"""

from __future__ import annotations

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
from tasks.ldap.authenticate import check_password, login_attribute
from tasks.ldap.extract import SourceUser
from tasks.sso.keys import ensure_signing_pair
from tasks.sso.policy import Admission, admit
from tasks.sso.saml import AuthnRequest, IdentityProvider, ServiceProvider, sp_entity_id
from tasks.sso.throttle import Throttle
from tasks.state.store import AuditEntry, StateStore
from tasks.sync.transform import evaluate

log = logging.getLogger(__name__)

IDP_TARGET = "(sso)"
"""The audit log's target for password checks (not tied to one application)."""
PENDING_SECONDS = 600
"""How long a request waits for the person to sign in."""


@dataclass(slots=True)
class Session:
    """A signed-in person at the IdP (kept in memory; the cookie holds only its token)."""

    token: str
    login: str
    person: SourceUser
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A sign-in turned away: the reason shown, and seconds to wait when throttled."""

    reason: str
    wait: float = 0.0


def read_metadata(target: TargetConfig) -> str:
    """An application's SP metadata, from its file or URL; one line naming it on failure."""
    assert target.sso is not None
    where = f"targets[{target.name}].sso.sp_metadata ({target.sso.sp_metadata})"
    if target.sso.metadata_url():
        try:
            response = requests.get(target.sso.sp_metadata, timeout=30, allow_redirects=False)
        except requests.RequestException as exc:
            raise ConfigError(f"{where}: cannot fetch it: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ConfigError(f"{where}: answered HTTP {response.status_code}")
        return response.text
    try:
        return Path(target.sso.sp_metadata).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None


def service_providers(config: Config) -> list[ServiceProvider]:
    """Each target with an ``sso`` block as a SAML service provider."""
    sps = []
    for target in config.targets:
        if target.sso is None:
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


class SignOnService:
    """Sign-in, sessions, admission and answers for one IdP; thread-safe."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        sso = config.sso
        if sso is None:
            raise ConfigError("sso: the config has no sso section (docs/sso.md)")
        self.config = config
        self.sso = sso
        self.sps = service_providers(config)
        if not self.sps:
            raise ConfigError("sso: no target has an sso block, so there is nothing to sign in to")
        self.targets = {t.name: t for t in config.targets if t.sso is not None}
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
        self._pending: dict[str, tuple[AuthnRequest, float]] = {}
        self._lock = threading.Lock()

    # -- sign-in ---------------------------------------------------------------------

    def sign_in(self, login: str, password: str, address: str) -> Session | Refusal:
        """Check a password against the directory (throttled); a session when right."""
        login = login.strip()[:256]
        wait = self.throttle.wait(login, address)
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
            return Refusal(f"Too many failed attempts. Try again in {minutes} minute(s).", wait)
        try:
            result = check_password(
                self.config.source, self.login_attribute, login, password, self.released
            )
        except SourceError as exc:
            log.error("sso: the directory could not check a password: %s", exc)
            self._audit(IDP_TARGET, "sign-in", "", login, "failed", f"directory: {exc}")
            return Refusal("The directory cannot be reached right now. Try again later.")
        if result.outcome != "ok" or result.user is None:
            self.throttle.failed(login, address)
            cause = {
                "unknown": "no such login",
                "wrong_password": "wrong password",
                "ambiguous": "the login names several entries",
            }[result.outcome]
            source_id = result.user.source_id if result.user else ""
            self._audit(
                IDP_TARGET, "sign-in", source_id, login, "refused", f"{cause} (from {address})"
            )
            return Refusal("Wrong login or password.")
        self.throttle.succeeded(login)
        self._audit(IDP_TARGET, "sign-in", result.user.source_id, login, "ok", f"from {address}")
        session = Session(
            secrets.token_urlsafe(32),
            login,
            result.user,
            self.clock() + self.sso.session_minutes * 60,
        )
        with self._lock:
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

    def hold(self, request: AuthnRequest) -> str:
        """Keep an accepted request while the person signs in; its key goes in the form."""
        key = secrets.token_urlsafe(24)
        now = self.clock()
        with self._lock:
            for k, (_, at) in list(self._pending.items()):
                if at < now - PENDING_SECONDS:
                    del self._pending[k]
            self._pending[key] = (request, now)
        return key

    def take(self, key: str | None) -> AuthnRequest | None:
        """The request held under ``key`` (once)."""
        with self._lock:
            held = self._pending.pop(key or "", None)
        if held is None or held[1] < self.clock() - PENDING_SECONDS:
            return None
        return held[0]

    def peek(self, key: str | None) -> AuthnRequest | None:
        with self._lock:
            held = self._pending.get(key or "")
        return held[0] if held else None

    # -- admission and answers -------------------------------------------------------

    def admission(self, session: Session, app: str) -> Admission:
        """Whether the signed-in person gets into ``app`` now (the state store read afresh)."""
        target = self.targets[app]
        assert target.sso is not None
        record = self.store.records_of(app, [session.person.source_id]).get(
            session.person.source_id
        )
        label = target.sso.label or app
        return admit(app, label, session.person, record, target.sso.name_id)

    def applications(self, session: Session) -> list[tuple[ServiceProvider, Admission]]:
        """Every application with the person's admission to it (the launcher)."""
        return [(sp, self.admission(session, sp.app)) for sp in self.sps]

    def answer(
        self, session: Session, sp: ServiceProvider, request: AuthnRequest | None
    ) -> str | Refusal:
        """The auto-posting form with a signed assertion for ``sp``, or the refusal; audited."""
        decision = self.admission(session, sp.app)
        how = "SP-initiated" if request is not None else "IdP-initiated"
        if not decision.admitted or decision.name_id is None:
            self._audit(
                sp.app,
                "sso",
                session.person.source_id,
                session.login,
                "refused",
                f"{how}: {decision.reason}",
                decision.scim_id,
            )
            return Refusal(f"You cannot sign in to {sp.label}: {decision.reason}.")
        form = self.idp.response_form(
            sp, decision.name_id, self.attributes(sp.app, session.person), request=request
        )
        self._audit(
            sp.app,
            "sso",
            session.person.source_id,
            session.login,
            "ok",
            f"{how}: NameID {decision.name_id}",
            decision.scim_id,
        )
        return form

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
        return Refusal(f"This sign-in request is refused: {reason}.")

    def _audit(
        self,
        target: str,
        action: str,
        source_id: str,
        name: str,
        outcome: str,
        cause: str,
        scim_id: str | None = None,
    ) -> None:
        """One audit entry; when it cannot be written, the sign-in fails (closed)."""
        entry = AuditEntry("user", action, source_id, name, scim_id, outcome, cause)  # type: ignore[arg-type]
        self.store.audit(target, [entry])

    def close(self) -> None:
        self.store.close()
