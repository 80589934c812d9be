"""Who the identity provider lets into an application, and as whom (pure).

A person gets into an application only when the state store says the provisioner created
their account there and it is active, and the directory does not say their account is
disabled now; the NameID is the value the provisioner wrote to that application, so the
application links the session to that very account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tasks.ldap.extract import SourceUser
from tasks.state.store import StateRecord


@dataclass(frozen=True, slots=True)
class Admission:
    """The decision for one person and one application: admitted with a NameID, or why not."""

    app: str
    admitted: bool
    name_id: str | None = None
    reason: str = ""
    scim_id: str | None = None


def admit(
    app: str,
    label: str,
    person: SourceUser,
    record: StateRecord | None,
    name_id: Literal["userName", "externalId"],
) -> Admission:
    """Admit ``person`` to ``app`` or say why not, in words the person can act on."""
    if person.disabled:
        return Admission(app, False, reason="your directory account is disabled")
    if record is None:
        return Admission(app, False, reason=f"you have no account in {label}")
    if record.status != "active":
        return Admission(
            app, False, reason=f"your account in {label} is disabled", scim_id=record.scim_id
        )
    value = record.user_name if name_id == "userName" else record.payload.get("externalId")
    if not isinstance(value, str) or not value:
        return Admission(
            app,
            False,
            reason=f"your account in {label} has no {name_id} to sign in with",
            scim_id=record.scim_id,
        )
    return Admission(app, True, name_id=value, scim_id=record.scim_id)
