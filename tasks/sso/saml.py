"""SAML 2.0 on pysaml2 (with Debian's ``xmlsec1``): the only module that imports ``saml2``.

The identity provider reads AuthnRequests (HTTP-Redirect or HTTP-POST binding), refuses
those it cannot trust (an SP not configured, a signature missing where required or wrong, an
ACS URL the SP's metadata does not list, a request seen before), and answers with a signed
Response holding a signed Assertion (RSA-SHA256; audience, recipient, NotOnOrAfter and
InResponseTo set) posted to the SP's ACS. An unsolicited Response (IdP-initiated) goes to the
SP's first HTTP-POST ACS in its metadata.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import shutil
import threading
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tasks.config import NAME_ID_FORMATS
from tasks.errors import ConfigError

with warnings.catch_warnings():
    # saml2.cryptography.symmetric imports a cipher that cryptography deprecates (not used here)
    warnings.simplefilter("ignore")
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, saml
    from saml2.attribute_converter import AttributeConverter
    from saml2.config import IdPConfig
    from saml2.metadata import create_metadata_string
    from saml2.response import IncorrectlySigned
    from saml2.s_utils import UnknownPrincipal, UnsupportedBinding, do_ava, factory
    from saml2.saml import AUTHN_PASSWORD_PROTECTED, NAME_FORMAT_BASIC, NameID
    from saml2.samlp import STATUS_NO_PASSIVE
    from saml2.server import Server
    from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

BINDINGS = {"redirect": BINDING_HTTP_REDIRECT, "post": BINDING_HTTP_POST}


class _AsNamed(AttributeConverter):  # type: ignore[misc,unused-ignore]
    """Releases each attribute under the name the config gives it (NameFormat basic):
    pysaml2's own maps would rename ``email`` to ``urn:mace:dir:attribute-def:email``."""

    def __init__(self) -> None:
        super().__init__(NAME_FORMAT_BASIC)
        self._to: dict[str, str] = {}
        self._fro: dict[str, str] = {}

    def to_(self, attrvals: Mapping[str, list[str]]) -> list[Any]:
        return [
            factory(
                saml.Attribute,
                name=name,
                name_format=self.name_format,
                attribute_value=do_ava(values),
            )
            for name, values in attrvals.items()
        ]


class _Server(Server):  # type: ignore[misc,unused-ignore]
    """pysaml2's Server without its assertion store (no AssertionIDRequest or AuthnQuery
    here): it would keep every assertion issued, in memory, for good."""

    def support_AssertionIDRequest(self) -> bool:
        return False

    def support_AuthnQuery(self) -> bool:
        return False


MAX_SEEN = 200_000
"""Request ids remembered at most (about 40 MB); past it new requests are refused."""
MAX_REQUEST_BYTES = 100_000
"""The largest AuthnRequest XML read (a real one is 1-3 KB); bigger is refused unread."""
SAFE_URL = re.compile(r"^(https://|http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])[:/])[^\s\"'<>`]*$")
"""An ACS URL the IdP posts to: https (or http on this machine), nothing that could leave an
HTML attribute."""


def bounded_xml(encoded: str, binding: str) -> bytes:
    """The request's XML, refused when it is not base64 or inflates past the limit (a
    decompression bomb is stopped at MAX_REQUEST_BYTES, never expanded)."""
    if len(encoded) > 4 * MAX_REQUEST_BYTES:
        raise RequestRefused("the sign-in request is too big")
    try:
        raw = base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise RequestRefused("the sign-in request is not base64") from exc
    inflater = zlib.decompressobj(-15)
    try:
        xml = inflater.decompress(raw, MAX_REQUEST_BYTES + 1)
    except zlib.error:
        if binding == "redirect":
            raise RequestRefused(
                "the sign-in request is not deflated as the binding says"
            ) from None
        xml = raw  # the POST binding: plain base64 XML
    if len(xml) > MAX_REQUEST_BYTES:
        raise RequestRefused("the sign-in request is too big")
    return xml


def post_form(action: str, field: str, message: str, relay_state: str | None) -> str:
    """The page that posts a SAML message to ``action`` (every value escaped; pysaml2's own
    form puts the URL in unescaped)."""
    encoded = base64.b64encode(message.encode("utf-8")).decode("ascii")
    relay = (
        f'<input type="hidden" name="RelayState" value="{html.escape(relay_state)}">'
        if relay_state
        else ""
    )
    return (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>Signing in</title></head>"
        '<body onload="document.forms[0].submit()">'
        f'<form method="post" action="{html.escape(action)}">'
        f'<input type="hidden" name="{field}" value="{encoded}">{relay}'
        '<noscript><p>Press Continue to go on.</p><button type="submit">Continue</button>'
        "</noscript></form></body></html>"
    )


class RequestRefused(Exception):
    """An AuthnRequest the IdP does not answer, with the reason for the refusal page."""


@dataclass(frozen=True, slots=True)
class ServiceProvider:
    """One application's SAML side, from its metadata and the target's ``sso`` block."""

    app: str
    """The target's name."""
    label: str
    entity_id: str
    metadata: str
    require_signed_requests: bool
    name_id_format: str


@dataclass(frozen=True, slots=True)
class AuthnRequest:
    """What the IdP keeps of a request it accepted, until the person has signed in."""

    id: str
    sp: ServiceProvider
    acs_url: str
    relay_state: str | None
    force_authn: bool = False
    """The SP asks for the password again, even with a session at the IdP."""
    passive: bool = False
    """The SP asks not to show a page: without a session, a NoPassive answer."""

    @property
    def label(self) -> str:
        """The application's name, for the sign-in page."""
        return self.sp.label


def xmlsec_binary() -> str:
    """The ``xmlsec1`` program pysaml2 signs with; a clear error when it is not installed."""
    found = shutil.which("xmlsec1")
    if found is None:
        raise ConfigError(
            "xmlsec1 is not installed (apt-get install xmlsec1): the IdP signs with it"
        )
    return found


def sp_entity_id(metadata: str, where: str) -> tuple[str, bool]:
    """The SP's entity id and whether it says it signs its AuthnRequests."""
    config = IdPConfig()
    config.load({"entityid": "urn:check", "metadata": {"inline": [metadata]}})
    store = config.metadata
    sps = [e for e, d in store.items() if d.get("spsso_descriptor")]
    if len(sps) != 1:
        raise ConfigError(f"{where}: {len(sps)} SAML service providers in the metadata (want 1)")
    descriptor = store[sps[0]]["spsso_descriptor"][0]
    return sps[0], str(descriptor.get("authn_requests_signed", "false")).lower() == "true"


class IdentityProvider:
    """pysaml2's Server per application (so each has its own signing requirement), one key."""

    def __init__(
        self,
        *,
        entity_id: str,
        base_url: str,
        key_file: str,
        cert_file: str,
        sps: list[ServiceProvider],
        assertion_minutes: float,
        replay_window: float = 900,
    ) -> None:
        self.entity_id = entity_id
        self.sso_urls = {"redirect": f"{base_url}/sso/redirect", "post": f"{base_url}/sso/post"}
        self.sps = {sp.entity_id: sp for sp in sps}
        xmlsec = xmlsec_binary()

        def server(metadata: list[str], signed: bool) -> Server:
            config = IdPConfig()
            config.load(
                {
                    "entityid": entity_id,
                    "xmlsec_binary": xmlsec,
                    "key_file": key_file,
                    "cert_file": cert_file,
                    "accepted_time_diff": 120,
                    "service": {
                        "idp": {
                            "endpoints": {
                                "single_sign_on_service": [
                                    (self.sso_urls["redirect"], BINDING_HTTP_REDIRECT),
                                    (self.sso_urls["post"], BINDING_HTTP_POST),
                                ]
                            },
                            "name_id_format": list(NAME_ID_FORMATS.values()),
                            # under service.idp: pysaml2 reads them there (else SHA-1)
                            "signing_algorithm": SIG_RSA_SHA256,
                            "digest_algorithm": DIGEST_SHA256,
                            "sign_response": True,
                            "sign_assertion": True,
                            "want_authn_requests_signed": signed,
                            "policy": {
                                "default": {
                                    "lifetime": {"minutes": assertion_minutes},
                                    "attribute_restrictions": None,
                                    "name_form": NAME_FORMAT_BASIC,
                                }
                            },
                        }
                    },
                    "metadata": {"inline": metadata},
                }
            )
            config.attribute_converters = [_AsNamed()]
            return _Server(config=config)

        # the first parse (any SP, signatures checked when present) says who is asking
        # its metadata says WantAuthnRequestsSigned when every application's requests must be
        self._any = server([sp.metadata for sp in sps], all(s.require_signed_requests for s in sps))
        self._servers = {
            sp.entity_id: server([sp.metadata], sp.require_signed_requests) for sp in sps
        }
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._seen_lock = threading.Lock()
        self.replay_window = replay_window
        for sp in sps:
            for url in self._acs_urls(self._servers[sp.entity_id], sp):
                if not SAFE_URL.match(url):
                    raise ConfigError(
                        f"targets[{sp.app}].sso.sp_metadata: the ACS URL {url[:200]!r} is not "
                        "an https:// URL (http:// only on this machine)"
                    )

    def metadata(self) -> str:
        """The IdP's metadata (entity id, SSO endpoints, signing certificate) for the SPs."""
        return str(create_metadata_string(None, config=self._any.config, sign=False).decode())

    def parse_request(self, binding: str, message: Mapping[str, str]) -> AuthnRequest:
        """Read an AuthnRequest from the query (redirect) or form (post) fields.

        :raises RequestRefused: with the reason, for every request the IdP does not answer.
        """
        encoded = message.get("SAMLRequest")
        if not encoded:
            raise RequestRefused("no SAMLRequest in this sign-in request")
        bounded_xml(encoded, binding)
        relay_state = message.get("RelayState")
        if relay_state is not None and len(relay_state) > 1024:
            raise RequestRefused("the RelayState is longer than 1,024 characters")
        args = {
            "relay_state": relay_state,
            "sigalg": message.get("SigAlg"),
            "signature": message.get("Signature"),
        }
        try:
            first = self._any.parse_authn_request(encoded, BINDINGS[binding], **args)
            issuer = first.message.issuer.text if first.message.issuer is not None else ""
            sp = self.sps.get(issuer or "")
            if sp is None:
                raise RequestRefused(f"the application {issuer!r} is not configured here")
            server = self._servers[sp.entity_id]
            parsed = server.parse_authn_request(encoded, BINDINGS[binding], **args)
            request = parsed.message
            asked = request.assertion_consumer_service_url
            if asked and asked not in self._acs_urls(server, sp):
                raise RequestRefused(
                    f"the request's ACS URL {asked} is not in {sp.label}'s metadata"
                )
            response = server.response_args(request, [BINDING_HTTP_POST])
        except RequestRefused:
            raise
        except IncorrectlySigned as exc:
            raise RequestRefused("the request's signature is missing or wrong") from exc
        except (UnknownPrincipal, UnsupportedBinding) as exc:
            raise RequestRefused(f"the request names an unknown application or ACS: {exc}") from exc
        except Exception as exc:  # untrusted input: whatever pysaml2 raises means "refused"
            raise RequestRefused(f"the sign-in request is not valid SAML: {exc}") from exc
        if asked and asked != response["destination"]:
            raise RequestRefused(f"the request's ACS URL {asked} is not in {sp.label}'s metadata")
        self._recent(str(request.issue_instant))
        self._first_use(str(request.id))
        return AuthnRequest(
            str(request.id),
            sp,
            str(response["destination"]),
            relay_state,
            force_authn=str(request.force_authn).lower() in ("true", "1"),
            passive=str(request.is_passive).lower() in ("true", "1"),
        )

    def _recent(self, issue_instant: str) -> None:
        """Refuse a request issued outside the replay window (the replay cache remembers its
        ids that long; pysaml2 itself would take requests a day old)."""
        try:
            issued = datetime.fromisoformat(issue_instant.replace("Z", "+00:00"))
        except ValueError as exc:
            raise RequestRefused("the request's IssueInstant is not a time") from exc
        if issued.tzinfo is None:
            issued = issued.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - issued).total_seconds()
        if age > self.replay_window - 60 or age < -120:
            raise RequestRefused(
                f"the request was issued at {issue_instant[:40]}, outside the accepted "
                f"{int(self.replay_window // 60) - 1} minutes"
            )

    def _first_use(self, request_id: str) -> None:
        """Refuse a request id seen before (a replayed request). The ids of the window are
        kept, oldest first; when MAX_SEEN are live, new requests are refused (fail closed)."""
        now = time.monotonic()
        with self._seen_lock:
            while self._seen and next(iter(self._seen.values())) < now - self.replay_window:
                self._seen.popitem(last=False)
            if request_id in self._seen:
                raise RequestRefused("this sign-in request was already used (a replay)")
            if len(self._seen) >= MAX_SEEN:
                raise RequestRefused("too many sign-in requests at once; try again shortly")
            self._seen[request_id] = now

    def response_form(
        self,
        sp: ServiceProvider,
        name_id: str,
        attributes: Mapping[str, list[str]],
        *,
        request: AuthnRequest | None = None,
        relay_state: str | None = None,
    ) -> str:
        """The HTML page that posts a signed Response to the SP's ACS: the answer to
        ``request``, or unsolicited (IdP-initiated) when there is none."""
        server = self._servers[sp.entity_id]
        if request is not None:
            destination, in_response_to, relay_state = (
                request.acs_url,
                request.id,
                request.relay_state,
            )
        else:
            destination = self._default_acs(server, sp)
            in_response_to = None
        response = server.create_authn_response(
            dict(attributes),
            in_response_to,
            destination,
            sp.entity_id,
            name_id=NameID(format=sp.name_id_format, text=name_id),
            sign_response=True,
            sign_assertion=True,
            authn={"class_ref": AUTHN_PASSWORD_PROTECTED, "authn_auth": self.entity_id},
        )
        return post_form(destination, "SAMLResponse", str(response), relay_state)

    def no_passive_form(self, request: AuthnRequest) -> str:
        """The signed NoPassive answer to a passive request from someone not signed in."""
        server = self._servers[request.sp.entity_id]
        response = server.create_error_response(
            request.id,
            request.acs_url,
            (STATUS_NO_PASSIVE, "no session at the identity provider"),
            sign=True,
        )
        return post_form(request.acs_url, "SAMLResponse", str(response), request.relay_state)

    def _acs_urls(self, server: Server, sp: ServiceProvider) -> list[str]:
        """The SP's HTTP-POST ACS URLs, from its metadata (the only places answers go)."""
        services = server.metadata.assertion_consumer_service(sp.entity_id, BINDING_HTTP_POST)
        return [str(service["location"]) for service in services]

    def _default_acs(self, server: Server, sp: ServiceProvider) -> str:
        urls = self._acs_urls(server, sp)
        if not urls:
            raise RequestRefused(f"{sp.label}'s metadata lists no HTTP-POST ACS")
        return urls[0]
