"""``RequirePrincipal``: a route dependency that authenticates the caller, in the style of
``fastapi.security``.

::

    router = APIRouter(dependencies=[Depends(RequirePrincipal(scope="admin"))])

    @router.get("/things")
    async def things(principal: Principal = Depends(RequirePrincipal(scope="things:read"))): ...

The dependency reads the credentials (API key or bearer JWT), records who is calling in the
request's audit record, authenticates them with one consistent read (nothing is charged) and
checks the scope. The authenticator and the gatekeeper come from ``app.state.gate``, which the
composition root (``security.wiring``) sets, so a router needs no collaborators of its own.
"""

# No ``from __future__ import annotations``: FastAPI reads ``__call__``'s parameter types at
# run time, and a string annotation on a callable instance would not resolve.
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from security.api.shell import audit_event, aws_event

if TYPE_CHECKING:
    from security.auth import Authenticator, Principal
    from security.limits import Gatekeeper


@dataclass(frozen=True, slots=True)
class Gate:
    """What authenticating a request needs: the credential reader and the gatekeeper."""

    authenticator: "Authenticator"
    gatekeeper: "Gatekeeper"


class RequirePrincipal:
    """Authenticate the caller and require ``scope`` (``None``: any authenticated caller).

    Raises (answered by the app's error table):
        AuthenticationError: missing or invalid credentials (401).
        ForbiddenError: the credentials lack ``scope`` (403, reason ``refusal``).
    """

    def __init__(self, *, scope: str | None, refusal: str = "scope_required") -> None:
        self.scope = scope
        self.refusal = refusal

    def __call__(self, request: Request) -> "Principal":
        """Authenticate the request's credentials; the principal, if it carries the scope."""
        from security.errors import ForbiddenError

        gate: Gate = request.app.state.gate
        credentials = gate.authenticator.read_credentials(
            request.headers, event=aws_event(request.scope)
        )
        event = audit_event(request)
        event.identify(credentials)
        principal = gate.gatekeeper.authenticate(
            credentials, model=None, source_ip=event.source_ip or "unknown"
        )
        event.identify(principal)
        if self.scope is not None and self.scope not in principal.scopes:
            raise ForbiddenError(self.refusal)
        return principal
