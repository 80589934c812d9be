"""SAML 2.0 on pysaml2 (with Debian's ``xmlsec1``): the only module that imports ``saml2``.

The identity provider reads AuthnRequests (HTTP-Redirect or HTTP-POST binding), refuses
those it cannot trust (an SP not configured, a signature missing where required or wrong, an
ACS URL the SP's metadata does not list, a request seen before), and answers with a signed
Response holding a signed Assertion (RSA-SHA256; audience, recipient, NotOnOrAfter and
InResponseTo set) posted to the SP's ACS. An unsolicited Response (IdP-initiated) goes to the
SP's first HTTP-POST ACS in its metadata.
"""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
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
        replay_window: float = 3600,
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
            return Server(config=config)

        # the first parse (any SP, signatures checked when present) says who is asking
        # its metadata says WantAuthnRequestsSigned when every application's requests must be
        self._any = server([sp.metadata for sp in sps], all(s.require_signed_requests for s in sps))
        self._servers = {
            sp.entity_id: server([sp.metadata], sp.require_signed_requests) for sp in sps
        }
        self._seen: dict[str, float] = {}
        self._seen_lock = threading.Lock()
        self.replay_window = replay_window

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
        relay_state = message.get("RelayState")
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
        self._first_use(str(request.id))
        return AuthnRequest(str(request.id), sp, str(response["destination"]), relay_state)

    def _first_use(self, request_id: str) -> None:
        """Refuse a request id seen before (a replayed request)."""
        now = time.monotonic()
        with self._seen_lock:
            for seen, at in list(self._seen.items()):
                if at < now - self.replay_window:
                    del self._seen[seen]
            if request_id in self._seen:
                raise RequestRefused("this sign-in request was already used (a replay)")
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
        http: dict[str, Any] = server.apply_binding(
            BINDING_HTTP_POST,
            str(response),
            destination,
            relay_state=relay_state or "",
            response=True,
        )
        return str(http["data"])

    def _acs_urls(self, server: Server, sp: ServiceProvider) -> list[str]:
        """The SP's HTTP-POST ACS URLs, from its metadata (the only places answers go)."""
        services = server.metadata.assertion_consumer_service(sp.entity_id, BINDING_HTTP_POST)
        return [str(service["location"]) for service in services]

    def _default_acs(self, server: Server, sp: ServiceProvider) -> str:
        urls = self._acs_urls(server, sp)
        if not urls:
            raise RequestRefused(f"{sp.label}'s metadata lists no HTTP-POST ACS")
        return urls[0]
