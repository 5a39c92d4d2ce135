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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


_IAM_ARN = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::[0-9]{12}:[A-Za-z0-9+=,.@_/:-]{1,512}$")


@dataclass(frozen=True, slots=True)
class IamCaller:
    """The IAM identity API Gateway verified for an ``AWS_IAM`` route."""

    arn: str


def iam_arn(event: Mapping[str, Any]) -> str | None:
    """The caller's IAM ARN as API Gateway put it in the event (REST ``identity.userArn``, HTTP
    API ``authorizer.iam.userArn``), if well-formed."""
    context = event.get("requestContext")
    if not isinstance(context, Mapping):
        return None
    identity = context.get("identity")
    authorizer = context.get("authorizer")
    iam = authorizer.get("iam") if isinstance(authorizer, Mapping) else None
    for holder in (identity, iam):
        arn = holder.get("userArn") if isinstance(holder, Mapping) else None
        if isinstance(arn, str) and _IAM_ARN.match(arn):
            return arn
    return None


class RequireIamCaller:
    """The admin plane's gate: only a request API Gateway authorised with SigV4 (``AWS_IAM`` on
    the route) carries an IAM identity; no API key or token is read, so no prediction
    credential can ever administer. A route deployed without ``AWS_IAM`` has no identity and is
    refused (fail closed).

    Raises (answered by the app's error table):
        ForbiddenError: no IAM identity (403 ``iam_identity_required``).
    """

    def __call__(self, request: Request) -> IamCaller:
        """The verified IAM caller, recorded in the request's audit record."""
        from security.errors import ForbiddenError

        arn = iam_arn(aws_event(request.scope))
        event = audit_event(request)
        if arn is None:
            raise ForbiddenError("iam_identity_required")
        event.credential_type = "iam"
        event.principal_id = arn
        return IamCaller(arn)
