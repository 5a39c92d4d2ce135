"""``start-api``: the template's REST API on a loopback port, called as API Gateway calls it.

Each HTTP request becomes the REST API (v1) proxy event API Gateway sends, run on a warm
instance of the route's function (``workers.WorkerPool``); the function's proxy response
becomes the HTTP response. Functions fed by an SQS queue (an event source mapping in the
template) are driven by a poller that sends SQS-shaped events, as Lambda's event source does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from mlmoat.local.awsenv import (
    DUMMY_CREDENTIALS,
    LocalEnvironmentError,
    region_from,
    sqs_client,
)
from mlmoat.local.sigv4 import SignatureError, verify
from mlmoat.local.template import LOCAL_ACCOUNT_ID, Route, Template
from mlmoat.local.workers import FunctionLayout, FunctionStartError, Invocation, WorkerPool

_INTERNAL_ERROR = {"message": "Internal server error"}
_MISSING_TOKEN = {"message": "Missing Authentication Token"}


def build_proxy_event(
    *,
    route: Route,
    method: str,
    raw_path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    stage: str,
    path_parameters: dict[str, str],
    request_id: str,
) -> dict[str, Any]:
    """The API Gateway REST (v1) proxy integration event for one HTTP request."""
    parts = urlsplit(raw_path)
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    single_headers = {name: values[-1] for name, values in multi_headers.items()}
    query = parse_qs(parts.query, keep_blank_values=True)
    encoded = False
    text: str | None = None
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode("ascii"), True
    now = datetime.now(UTC)
    lowered = {name.lower(): value for name, value in single_headers.items()}
    return {
        "resource": route.resource,
        "path": parts.path,
        "httpMethod": method,
        "headers": single_headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "accountId": LOCAL_ACCOUNT_ID,
            "apiId": "local",
            "resourceId": hashlib.sha256(route.resource.encode()).hexdigest()[:6],
            "resourcePath": route.resource,
            "httpMethod": method,
            "path": f"/{stage}{parts.path}",
            "stage": stage,
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "domainName": lowered.get("host", "localhost"),
            "domainPrefix": lowered.get("host", "localhost").split(".")[0],
            "identity": {
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent"),
                "accountId": None,
                "apiKey": None,
                "apiKeyId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "user": None,
                "userArn": None,
                "accessKey": None,
            },
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def proxy_response(invocation: Invocation) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body from a function's proxy response; 502 when it is not one."""
    response = invocation.response
    if invocation.error is not None or not isinstance(response, dict):
        return 502, [("Content-Type", "application/json")], json.dumps(_INTERNAL_ERROR).encode()
    try:
        status = int(response.get("statusCode", 200))
    except (TypeError, ValueError):
        return 502, [("Content-Type", "application/json")], json.dumps(_INTERNAL_ERROR).encode()
    headers: list[tuple[str, str]] = []
    multi = response.get("multiValueHeaders") or {}
    for name, values in multi.items():
        headers.extend((name, str(value)) for value in values)
    for name, value in (response.get("headers") or {}).items():
        if name not in multi:
            headers.append((name, str(value)))
    body = response.get("body") or ""
    payload = (
        base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode("utf-8")
    )
    return status, headers, payload


class LocalApi:
    """The template's routes served on ``host:port``; a warm worker pool per function."""

    def __init__(
        self,
        template: Template,
        layouts: dict[str, FunctionLayout],
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        workers: int = 1,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        # What AWS_IAM routes check SigV4 signatures against: the local credentials and region.
        environ = credentials if credentials is not None else os.environ
        self.access_key = environ.get("AWS_ACCESS_KEY_ID") or DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"]
        self._secret_key = (
            environ.get("AWS_SECRET_ACCESS_KEY") or DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        )
        self.region = region_from(environ)
        self.routes = template.routes()
        self.stage = _stage(template)
        self.pools = {name: WorkerPool(layout, workers) for name, layout in layouts.items()}
        try:
            self._server = ThreadingHTTPServer((host, port), _handler_class(self))
        except OSError as exc:  # a port in use, an address not ours: say so, no traceback
            raise LocalEnvironmentError(
                f"cannot serve on {host}:{port} ({exc.strerror or exc}): another `make local` or "
                "`mlmoat local start-api` may be using it; stop it or choose another with --port "
                "(`make local LOCAL_ARGS='--port 3001'`)"
            ) from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._pollers: list[QueuePoller] = []

    @property
    def url(self) -> str:
        """The base URL being served."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_poller(self, poller: QueuePoller) -> None:
        """Run ``poller`` alongside the API (started and stopped with it)."""
        self._pollers.append(poller)

    def start(self) -> LocalApi:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-api", daemon=True
        )
        self._thread.start()
        for poller in self._pollers:
            poller.start()
        return self

    def stop(self) -> None:
        """Stop serving and stop every warm instance."""
        for poller in self._pollers:
            poller.stop()
        self._server.shutdown()
        self._server.server_close()
        for pool in self.pools.values():
            pool.stop()

    def handle(
        self,
        method: str,
        raw_path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        source_ip: str,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Route one HTTP request to its function and translate the answer."""
        path = urlsplit(raw_path).path
        request_id = str(uuid.uuid4())
        for route in self.routes:
            parameters = route.match(method, path)
            if parameters is None or route.function not in self.pools:
                continue
            event = build_proxy_event(
                route=route,
                method=method,
                raw_path=raw_path,
                headers=headers,
                body=body,
                source_ip=source_ip,
                stage=self.stage,
                path_parameters=parameters,
                request_id=request_id,
            )
            if route.authorizer == "AWS_IAM":
                # API Gateway checks the signature before any function runs, and tells the
                # function who signed (requestContext.identity).
                try:
                    caller = verify(
                        method,
                        raw_path,
                        headers,
                        body,
                        access_key=self.access_key,
                        secret_key=self._secret_key,
                        region=self.region,
                        account_id=LOCAL_ACCOUNT_ID,
                    )
                except SignatureError as exc:
                    _log(f"{route.function}: refused unsigned or badly signed request")
                    message = {"message": str(exc)}
                    return 403, [("Content-Type", "application/json")], json.dumps(message).encode()
                event["requestContext"]["identity"].update(caller.identity())
            try:
                invocation = self.pools[route.function].invoke(event, request_id)
            except FunctionStartError as exc:
                _log(f"{route.function}: init failed: {exc}")
                return (
                    502,
                    [("Content-Type", "application/json")],
                    json.dumps(_INTERNAL_ERROR).encode(),
                )
            _log(invocation.report_line())
            if invocation.error is not None:
                error = invocation.error
                _log(f"{route.function}: {error.get('errorType')}: {error.get('errorMessage')}")
            status, response_headers, payload = proxy_response(invocation)
            response_headers.append(("x-amzn-RequestId", request_id))
            return status, response_headers, payload
        # API Gateway answers an unknown resource or method like this, without calling a function.
        return 403, [("Content-Type", "application/json")], json.dumps(_MISSING_TOKEN).encode()


def _stage(template: Template) -> str:
    for resource in template.resources("AWS::Serverless::Api").values():
        stage = resource.get("Properties", {}).get("StageName")
        if stage is not None:
            return str(template.resolve(stage))
    return "Prod"


_QUERY_RE = re.compile(r"\?[^\s\"']*")


def log_safe(message: str) -> str:
    """``message`` with query strings dropped and control characters escaped, for the access log.

    A query string can carry a credential (``?api_key=...``), and a raw control character in a
    request line could forge or hide log lines.
    """
    message = _QUERY_RE.sub("?[query omitted]", message)
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message
    )


def _log(message: str) -> None:
    # One write per line: print() writes the text and the newline separately, and the workers
    # share this stderr, so a function's log line could land between them (seen by the load test).
    sys.stderr.write(log_safe(message) + "\n")
    sys.stderr.flush()


def _handler_class(api: LocalApi) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mlmoat-local"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            status, headers, payload = api.handle(
                self.command, self.path, list(self.headers.items()), body, self.client_address[0]
            )
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        def __getattr__(self, name: str) -> Any:
            # Any other method (TRACE, QUERY, ...) is unrouted too: API Gateway's 403 from
            # api.handle, not http.server's 501 (a 5xx the fuzz suite counts as a server error).
            if name.startswith("do_"):
                return self._serve
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            _log(f"{self.client_address[0]} - {format % args}")

    return _Handler


class QueuePoller:
    """Lambda's SQS event source, locally: receive a batch, invoke, delete what succeeded."""

    def __init__(
        self, template: Template, pool: WorkerPool, queue_id: str, *, batch_size: int = 10
    ) -> None:
        self.template = template
        self.pool = pool
        self.queue_url = template.queue_url(queue_id)
        self.queue_arn = template.arn(queue_id)
        self.batch_size = max(1, min(10, batch_size))
        self._sqs = sqs_client(template.endpoint, template.region)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poll-{queue_id}", daemon=True)
        self.invocations = 0

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for the current batch)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    def poll_once(self) -> int:
        """Receive one batch and process it; the number of messages received."""
        messages = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        event = {"Records": [self._record(message) for message in messages]}
        try:
            invocation = self.pool.invoke(event)
        except FunctionStartError as exc:
            _log(f"{self.pool.layout.spec.logical_id}: init failed: {exc}")
            return len(messages)
        self.invocations += 1
        _log(invocation.report_line())
        if invocation.error is not None:
            # The whole batch returns to the queue after its visibility timeout (then the DLQ).
            _log(f"{self.pool.layout.spec.logical_id}: {invocation.error.get('errorType')}")
            return len(messages)
        failed = {
            str(item.get("itemIdentifier"))
            for item in ((invocation.response or {}).get("batchItemFailures") or [])
            if isinstance(invocation.response, dict)
        }
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        return len(messages)

    def _record(self, message: Mapping[str, Any]) -> dict[str, Any]:
        attributes = {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": base64.b64encode(value["BinaryValue"]).decode()
                if "BinaryValue" in value
                else None,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value.get("DataType"),
            }
            for name, value in (message.get("MessageAttributes") or {}).items()
        }
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": attributes,
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.template.region,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except (
                BotoCoreError,
                ClientError,
            ) as exc:  # the endpoint went away: retry, as Lambda does
                _log(f"poller: {exc}")
                time.sleep(1)
