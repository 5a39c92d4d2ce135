"""The real stack for the red team: API Gateway events through the Lambda handlers.

``RedTeamStack`` starts the one local stack's moto server (``mlmoat.local.stack.LocalStack``:
DynamoDB and SQS over HTTP on loopback, in its own process, the template's table and queues
bootstrapped), runs ``PredictFunction`` and
``MonitorFunction`` from the Lambda build under CPython 3.13 as ``mlmoat local`` runs them (one
warm instance each, ``mlmoat.local.workers``) with the environment template.yaml gives them
(model dir pointed at the red team's models), and creates real API keys with budgets through
``security.admin``. The functions' output (their audit records) goes to the audit file.

``StackTarget`` is what an attacker holds: one API key. Each query is a REST (v1) proxy event
(``mlmoat.local.events.rest_event``) sent to the predict handler; the attacker
sees the response body only. After each request the extraction queue is drained into the monitor
handler as SQS batch events, so detection happens exactly as deployed; the detector state is read
back from the principal's ``mon#`` item and the flag from the key item.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlmoat.local.awsenv import DUMMY_CREDENTIALS
from mlmoat.local.events import rest_event, sqs_event
from mlmoat.local.lambda_runtime import LambdaContext
from mlmoat.redteam.cases import ModelCase
from security.extraction import DetectorState

REPO = Path(__file__).resolve().parents[3]
_DUMMY_AWS = {**DUMMY_CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


#: The settings every function of the stack runs with (each declared by the template: the local
#: workers, like SAM, ignore an override of a variable it does not declare).
SERVED_SETTINGS = {
    "SECURITY_MAX_ROWS": "100",
    # Detection is measured per row and the drain after each request reads each query: the sink
    # sends it as it is served. Its buffer keeps a principal's order, so it cannot change which
    # row fires; the capacity replay runs the buffered default.
    "SECURITY_EXTRACTION_SEND_MAX_DELAY": "0",
    # Likewise the monitor applies each drained batch at once (its buffer, too, keeps a
    # principal's order: the row that fires is the same; it only fires later).
    "SECURITY_MONITOR_FLUSH_SECONDS": "0",
}


class RedTeamStack:
    """An embedded DynamoDB/SQS with the template's resources and the two handlers loaded."""

    def __init__(self, *, model_dir: Path, audit_path: Path) -> None:
        """Prepare (nothing starts until ``__enter__``)."""
        self.model_dir = model_dir.resolve()
        self.audit_path = audit_path
        self._saved: dict[str, str | None] = {}
        self._predict: dict[str, Any] = {}
        self._audit: IO[str] | None = None
        self._unmonitored = False
        self._functions: list[Any] = []

    def __enter__(self) -> RedTeamStack:
        from mlmoat.local import stack as local
        from mlmoat.local.template import Template

        # The one local stack's DynamoDB (its own process; tables and queues bootstrapped); its
        # log goes to a scratch directory, not beside the report.
        self._scratch = tempfile.TemporaryDirectory(prefix="mlmoat-redteam-")
        self._server = local.LocalStack(work_dir=Path(self._scratch.name), instances=0)
        self._server.start_dynamodb()
        endpoint = self._server.endpoint
        env = dict(_DUMMY_AWS)
        env["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
        env["AWS_ENDPOINT_URL_SQS"] = endpoint
        self._set_env(env)
        from mlmoat.local.build import ensure_build

        self._build_dir = ensure_build(REPO)
        template = Template(REPO / "template.yaml", endpoint=endpoint, region="us-east-1")
        self._template = template
        self.env = dict(template.function("PredictFunction").environment)
        self.env.update(self._served_env())
        self._set_env(self.env)
        from security.admin import KeyAdmin, uncapped
        from security.settings import Settings
        from security.store import PrincipalStore

        self.settings = Settings.from_env(os.environ)
        self.sqs = local.aws_client("sqs", env)
        self.store = PrincipalStore(
            client=local.dynamodb_client(env), table_name=self.settings.table_name
        )
        self.admin = KeyAdmin(store=self.store, settings=uncapped(self.settings))
        self.queue_url = str(self.settings.extraction_queue_url)
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        # Appended to by every function process at once: O_APPEND keeps their lines whole.
        self.audit_path.write_text("", encoding="utf-8")
        self._audit = self.audit_path.open("a", encoding="utf-8")
        self.monitor = self._load("MonitorFunction", {})
        return self

    def __exit__(self, *exc_info: object) -> None:
        for function in self._functions:
            function.stop()
        self._server.stop()
        self._scratch.cleanup()
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self._audit is not None:
            self._audit.close()

    def _served_env(self) -> dict[str, str]:
        # The template's default model when it is among the attacked ones, else the first of
        # them (an imported model attacked alone).
        default = self._template.function("PredictFunction").environment["SECURITY_DEFAULT_MODEL"]
        served = sorted(p.name for p in self.model_dir.iterdir() if (p / "manifest.json").is_file())
        return {
            "SECURITY_MODEL_DIR": str(self.model_dir),
            "SECURITY_DEFAULT_MODEL": default if default in served else served[0],
            **SERVED_SETTINGS,
        }

    def _set_env(self, env: dict[str, str]) -> None:
        for name, value in env.items():
            self._saved.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _load(self, logical_id: str, overrides: dict[str, str]) -> Any:
        from mlmoat.local.stack import start_function

        assert self._audit is not None
        function = start_function(
            self._template,
            self._build_dir,
            logical_id,
            env={**self._served_env(), **overrides},
            log=self._audit,
        )
        self._functions.append(function)
        return function

    def predict_handler(self, squeeze_policy: str) -> Any:
        """The predict handler as deployed with ``SECURITY_SQUEEZE_POLICY=squeeze_policy``."""
        if squeeze_policy not in self._predict:
            function = self._load("PredictFunction", {"SECURITY_SQUEEZE_POLICY": squeeze_policy})
            self._predict[squeeze_policy] = function.handler
        return self._predict[squeeze_policy]

    def create_key(self, *, owner: str, output_policy: str, budget: int) -> tuple[str, str]:
        """A real API key scoped ``predict:*`` with a row budget; returns (api_key, principal)."""
        created = self.admin.create(
            owner=owner, output_policy=output_policy, budget=budget, rate_limit="100000000/minute"
        )
        return str(created["api_key"]), f"key#{created['key_id']}"

    def drain(self) -> int:
        """Feed every queued message to the monitor handler; return how many were processed.

        Messages left by unmonitored attackers are dropped first (``purge``). The queue is only
        fed by this process's synchronous handler calls, so the embedded server hands out every
        visible message up to 10 per receive: a short batch means the queue is empty, and the
        loop stops without another round trip.
        """
        self._drop_unmonitored()
        processed = 0
        while True:
            received = self._receive()
            if not received:
                return processed
            event = sqs_event(received)
            context = LambdaContext("MonitorFunction")
            result = self.monitor.handler(event, context)
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
            done = [m for m in received if m["MessageId"] not in failed]
            self._delete(done)
            processed += len(done)
            if len(received) < 10 and not failed:
                return processed

    def purge(self) -> None:
        """Mark queued messages as nobody's to monitor (attacks measured for something else).

        They are dropped in one pass before the next drain (SQS allows one PurgeQueue a minute),
        so an unmonitored attacker costs no queue round trips per request.
        """
        self._unmonitored = True

    def _drop_unmonitored(self) -> None:
        if not self._unmonitored:
            return
        self._unmonitored = False
        while True:
            received = self._receive()
            self._delete(received)
            if len(received) < 10:
                return

    def _receive(self) -> list[dict[str, Any]]:
        received = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        return [dict(m) for m in received.get("Messages", [])]

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        if messages:
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )

    def monitor_state(self, principal_id: str, model: str) -> DetectorState:
        """The monitor's state item for a principal and model, as stored."""
        blob, _ = self.store.load_monitor_state(principal_id, model)
        return DetectorState.from_bytes(blob) if blob else DetectorState()

    def key_item(self, principal_id: str) -> dict[str, Any]:
        """The principal's item (status, flags, counters)."""
        return self.store.get(principal_id) or {}


#: The red team's stack under its former name (``mlmoat.redteam.run`` imports it so).
LocalStack = RedTeamStack


class FlaggedError(RuntimeError):
    """Raised by a target built with ``stop_when_flagged`` once the monitor has flagged it."""


class StackTarget:
    """One attacker (one API key with a budget) against one model through the real handlers."""

    def __init__(
        self,
        stack: RedTeamStack,
        case: ModelCase,
        policy: str,
        *,
        squeeze_policy: str = "flag",
        budget: int = 1_000_000,
        batch_rows: int = 100,
        monitored: bool = False,
        stop_when_flagged: bool = False,
        drain_every: int = 1,
    ) -> None:
        """Create the attacker's key and pick the handler for the squeeze policy."""
        self.stack = stack
        self.case = case
        self.policy = policy
        self.batch_rows = batch_rows
        self.monitored = monitored
        self.stop_when_flagged = stop_when_flagged
        self.drain_every = drain_every
        self.queries = 0
        self.refused = 0
        self.statuses: dict[int, int] = {}
        self._handler = stack.predict_handler(squeeze_policy)
        owner = f"redteam-{uuid.uuid4().hex[:12]}"
        self.api_key, self.principal_id = stack.create_key(
            owner=owner, output_policy=policy, budget=budget
        )

    @property
    def state(self) -> DetectorState:
        """The monitor's stored state for this principal and model."""
        return self.stack.monitor_state(self.principal_id, self.case.name)

    def query(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Send rows in requests of ``batch_rows``; return (what the attacker sees, served mask)."""
        rows = self.case.domain.snap(np.atleast_2d(np.asarray(rows, dtype=np.float64)))
        seen = np.zeros((rows.shape[0], len(self.case.classes)))
        served = np.zeros(rows.shape[0], dtype=bool)
        for start in range(0, rows.shape[0], self.batch_rows):
            chunk = rows[start : start + self.batch_rows]
            answers = self._answer(chunk)
            for offset, prediction in enumerate(answers):
                if prediction is None:
                    self.refused += 1
                    continue
                seen[start + offset] = self._visible(prediction)
                served[start + offset] = True
            requests = sum(self.statuses.values())
            if self.monitored and requests % self.drain_every == 0:
                # SQS hands the monitor batches of up to 10 messages, as Lambda's event source
                # mapping does; the detector still records the exact row that fired.
                self.stack.drain()
                # Measuring detection only: once flagged, the rest of the stream changes nothing.
                if self.stop_when_flagged and self.state.flagged:
                    raise FlaggedError(self.principal_id)
        if self.monitored:
            self.stack.drain()
        else:
            self.stack.purge()
        return seen, served

    def _answer(self, rows: np.ndarray) -> list[dict[str, Any] | None]:
        """Predictions for a batch; a batch refused for one row (422) is resent row by row,
        as a client would, so each row gets its own answer (None: refused)."""
        status, body = self._request(rows)
        self.queries += rows.shape[0]
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            return list(body["predictions"])
        if status == 422 and rows.shape[0] > 1:
            answers: list[dict[str, Any] | None] = []
            for row in rows:
                answers.extend(self._answer(row.reshape(1, -1)))
            return answers
        return [None] * rows.shape[0]

    def _request(self, rows: np.ndarray) -> tuple[int, dict[str, Any]]:
        event = rest_event(
            path=f"/models/{self.case.name}/predict",
            body=json.dumps({"instances": self.case.wire_rows(rows)}).encode(),
            headers={"Content-Type": "application/json", "X-API-Key": self.api_key},
            path_parameters={"model": self.case.name},
        )
        context = LambdaContext("PredictFunction")
        response = self._handler(event, context)
        raw = response.get("body") or "{}"
        if response.get("isBase64Encoded"):
            raw = base64.b64decode(raw).decode()
        return int(response["statusCode"]), json.loads(raw)

    def _visible(self, prediction: dict[str, Any]) -> np.ndarray:
        vector = np.zeros(len(self.case.classes))
        probabilities = prediction.get("probabilities")
        if isinstance(probabilities, dict) and len(probabilities) == len(self.case.classes):
            for i, name in enumerate(self.case.classes):
                vector[i] = float(probabilities[name])
            return vector
        vector[self.case.classes.index(str(prediction["label"]))] = 1.0
        return vector
