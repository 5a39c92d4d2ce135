"""AWS Signature Version 4 checks for the local API's ``AWS_IAM`` routes (the admin plane).

API Gateway answers a route with ``Auth: {Authorizer: AWS_IAM}`` only when the request is signed
with SigV4 by an IAM identity allowed ``execute-api:Invoke``, and puts that identity in the
event's ``requestContext.identity``. ``mlmoat local start-api`` does the same with the local
credentials (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``testing``/``testing`` unless set):
``verify`` recomputes the signature from the request (the algorithm of the AWS General Reference,
"Create a signed AWS API request") and compares it in constant time. Any client that signs for
``execute-api`` works: ``curl --aws-sigv4 "aws:amz:<region>:execute-api" --user KEY:SECRET``,
botocore's ``SigV4Auth``, awscurl.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "execute-api"
#: How far the signature's time may be from the server's (AWS allows 15 minutes).
MAX_SKEW_SECONDS = 15 * 60
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
_SPACES = re.compile(r"\s+")


class SignatureError(Exception):
    """The request is not signed, or not signed by the local credentials (API Gateway's 403)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity API Gateway would put in ``requestContext.identity``."""

    access_key: str
    account_id: str

    @property
    def user_arn(self) -> str:
        """The local operator's ARN (an IAM user named after the access key)."""
        return f"arn:aws:iam::{self.account_id}:user/{self.access_key}"

    def identity(self) -> dict[str, str]:
        """The ``identity`` fields API Gateway sets for a SigV4-signed request."""
        return {
            "accountId": self.account_id,
            "accessKey": self.access_key,
            "caller": self.access_key,
            "user": self.access_key,
            "userArn": self.user_arn,
        }


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """The SigV4 signing key for one day, region and service."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


def canonical_request(
    method: str,
    raw_path: str,
    headers: Sequence[tuple[str, str]],
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    """The canonical request of SigV4 over the headers named in ``signed``."""
    parts = urlsplit(raw_path)
    path = parts.path or "/"
    query = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    canonical_headers = "".join(f"{name}:{','.join(values.get(name, []))}\n" for name in signed)
    return "\n".join(
        [
            method.upper(),
            path,
            "&".join(f"{k}={v}" for k, v in query),
            canonical_headers,
            ";".join(signed),
            payload_hash,
        ]
    )


def verify(
    method: str,
    raw_path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    account_id: str,
    now: datetime | None = None,
) -> Caller:
    """Check a request's SigV4 signature against the local credentials; the caller if it holds.

    Raises:
        SignatureError: no signature (``missing``), a malformed one, another access key, region
            or service, a time too far from now, a payload that does not match its hash, or a
            signature that does not match.
    """
    lowered = [(name.lower(), value) for name, value in headers]
    authorization = [value for name, value in lowered if name == "authorization"]
    if not authorization:
        raise SignatureError("Missing Authentication Token", missing=True)
    if len(authorization) > 1:
        raise SignatureError("The request carries more than one Authorization header.")
    found = _AUTH_RE.match(authorization[0].strip())
    if found is None:
        raise SignatureError("Authorization header requires a SigV4 signature.")
    scope = found["credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise SignatureError("The credential scope is malformed.")
    key_id, date, scope_region, service, _ = scope
    if key_id != access_key or scope_region != region or service != SERVICE:
        raise SignatureError("The security token included in the request is invalid.")
    signed = found["signed"].split(";")
    if "host" not in signed or signed != sorted(signed):
        raise SignatureError("The signed headers must include host, in order.")
    amz_date = next((value for name, value in lowered if name == "x-amz-date"), "")
    try:
        moment = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise SignatureError("X-Amz-Date is missing or malformed.") from exc
    current = now or datetime.now(UTC)
    if abs((current - moment).total_seconds()) > MAX_SKEW_SECONDS or amz_date[:8] != date:
        raise SignatureError("Signature expired or not yet valid.")
    payload_hash = hashlib.sha256(body).hexdigest()
    declared = next((value for name, value in lowered if name == "x-amz-content-sha256"), None)
    if declared is not None and declared != payload_hash:
        raise SignatureError("The payload does not match its signed hash.")
    request = canonical_request(method, raw_path, lowered, signed, declared or payload_hash)
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            amz_date,
            f"{date}/{region}/{SERVICE}/aws4_request",
            hashlib.sha256(request.encode("utf-8")).hexdigest(),
        ]
    )
    expected = hmac.new(
        signing_key(secret_key, date, region), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, found["signature"]):
        raise SignatureError(
            "The request signature we calculated does not match the signature you provided."
        )
    return Caller(access_key=access_key, account_id=account_id)
