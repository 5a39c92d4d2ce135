"""The extraction queue's producer, buffered: batches of requests, bounded delay, no silent loss.

``QuerySink`` keeps served queries in the execution environment and sends them with
``SendMessageBatch`` when 10 are buffered, 100 rows are, or the oldest is ``max_delay`` old when
a request arrives; every query it loses is named in the ``Delivery`` of the request that flushed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from interpreter import PATH_ENV, PYTHON
from security.extraction import QueryMessage, QuerySink

ROW = np.array([[5.1, 3.5, 1.4, 0.2]])
SRC = Path(__file__).resolve().parents[2] / "src"


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An SQS client that records SendMessageBatch calls; ``fail`` names entry ids SQS refuses,
    ``error`` makes the whole call raise."""

    def __init__(self, fail: tuple[str, ...] = (), error: Exception | None = None) -> None:
        self.calls: list[list[dict[str, str]]] = []
        self.fail = fail
        self.error = error

    def send_message_batch(self, *, QueueUrl: str, Entries: list[dict[str, str]]) -> Any:  # noqa: N803
        self.calls.append(Entries)
        if self.error is not None:
            raise self.error
        failed = [{"Id": e["Id"], "Code": "InternalError", "SenderFault": False}
                  for e in Entries if e["Id"] in self.fail]  # fmt: skip
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in self.fail],
            "Failed": failed,
        }


def _send(sink: QuerySink, request_id: str, rows: np.ndarray = ROW) -> Any:
    return sink.send(
        principal_id="key#q1",
        model="iris",
        request_id=request_id,
        rows=rows,
        labels=["setosa"] * len(rows),
        confidences=[0.9] * len(rows),
    )


def _ids(entries: list[dict[str, str]]) -> list[str]:
    return [json.loads(e["MessageBody"])["request_id"] for e in entries]


def test_ten_requests_leave_in_one_call_in_the_order_they_were_served() -> None:
    client, clock = Recorder(), Clock()
    sink = QuerySink(client=client, queue_url="q", clock=clock)  # type: ignore[arg-type]
    for i in range(9):
        assert _send(sink, f"r{i}")  # nothing lost
        clock.now += 0.01
    assert client.calls == [] and sink.pending == 9
    delivery = _send(sink, "r9")
    # where the environment's buffer stands: 10 queued, 10 of them sent
    assert delivery.position() == {"env": sink.environment, "queued": 10, "flushed": 10}
    (call,) = client.calls
    assert _ids(call) == [f"r{i}" for i in range(10)] and sink.pending == 0
    # and each entry is the packed message the monitor parses
    assert QueryMessage.from_json(call[3]["MessageBody"]).rows == (tuple(ROW[0]),)


def test_a_request_of_100_rows_leaves_at_once_with_what_was_buffered() -> None:
    client = Recorder()
    sink = QuerySink(client=client, queue_url="q", clock=Clock())  # type: ignore[arg-type]
    _send(sink, "small")
    _send(sink, "large", np.repeat(ROW, 100, axis=0))
    assert [_ids(call) for call in client.calls] == [["small", "large"]]


def test_the_oldest_query_waits_at_most_max_delay_while_requests_arrive() -> None:
    client, clock = Recorder(), Clock()
    sink = QuerySink(client=client, queue_url="q", clock=clock, max_delay=1.0)  # type: ignore[arg-type]
    _send(sink, "a")
    clock.now += 0.999
    _send(sink, "b")
    assert client.calls == []
    clock.now += 0.001  # "a" is 1 s old when "c" arrives
    _send(sink, "c")
    assert [_ids(call) for call in client.calls] == [["a", "b", "c"]]
    # max_delay=0: every request's query leaves as it is served
    unbuffered = QuerySink(client=client, queue_url="q", clock=clock, max_delay=0)  # type: ignore[arg-type]
    _send(unbuffered, "d")
    assert _ids(client.calls[-1]) == ["d"]


def test_an_unreachable_queue_names_every_lost_query_to_the_request_that_flushed() -> None:
    from botocore.exceptions import EndpointConnectionError

    client = Recorder(error=EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    sink = QuerySink(client=client, queue_url="q", clock=Clock())  # type: ignore[arg-type]
    deliveries = [_send(sink, f"r{i}") for i in range(10)]
    # the first nine were buffered (nothing known yet); the tenth's send lost all ten
    assert all(deliveries[:9]) and not deliveries[9]
    assert [(d.queued, d.flushed) for d in deliveries[8:]] == [(9, 0), (10, 10)]
    assert deliveries[9].lost == tuple(f"r{i}" for i in range(10))
    assert sink.failures == 10 and sink.pending == 0


def test_an_entry_sqs_refuses_is_lost_alone() -> None:
    client = Recorder(fail=("4",))
    sink = QuerySink(client=client, queue_url="q", clock=Clock())  # type: ignore[arg-type]
    lost = [_send(sink, f"r{i}").lost for i in range(10)]
    assert lost[-1] == ("r4",) and sink.failures == 1


def test_flush_sends_what_is_buffered_and_refusals_share_the_batches() -> None:
    client = Recorder()
    sink = QuerySink(client=client, queue_url="q", clock=Clock())  # type: ignore[arg-type]
    assert sink.flush() and client.calls == []  # nothing buffered: no call
    _send(sink, "served")
    assert sink.send_refusal(principal_id="key#q1", model="iris", request_id="no", reason="x")
    assert sink.flush()
    (call,) = client.calls
    assert _ids(call) == ["served", "no"]
    assert json.loads(call[1]["MessageBody"])["kind"] == "refusal"


@mock_aws
def test_large_requests_are_split_and_batched_under_sqs_limits() -> None:
    sqs = boto3.client("sqs", region_name="eu-west-1")
    url = sqs.create_queue(QueueName="sink-unit-large")["QueueUrl"]
    sizes: list[int] = []
    sqs.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch",
        lambda params, **_: sizes.append(sum(len(e["MessageBody"]) for e in params["Entries"])),
    )
    sink = QuerySink(client=sqs, queue_url=url, clock=Clock())
    rows = np.arange(1500 * 30, dtype=np.float64).reshape(1500, 30)
    assert _send(sink, "big", rows) and sink.flush()
    # each call within SQS's 256 KiB per SendMessageBatch, and every row arrives once
    assert len(sizes) > 1 and max(sizes) <= 256 * 1024
    parts = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in batch:
            parts.append(QueryMessage.from_json(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    parts.sort(key=lambda m: m.part)
    assert np.array_equal(np.array([row for m in parts for row in m.rows]), rows)


def test_bounds_are_checked() -> None:
    for bounds in ({"max_entries": 11}, {"max_entries": 0}, {"max_rows": 0}, {"max_delay": -1}):
        with pytest.raises(ValueError):
            QuerySink(client=Recorder(), queue_url="q", **bounds)  # type: ignore[arg-type]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_sends_the_buffer_before_the_environment_goes(tmp_path: Path) -> None:
    # given a process whose sink holds three queries, when Lambda's SIGTERM arrives
    sent = tmp_path / "sent.json"
    script = textwrap.dedent(
        f"""
        import json, os, signal, time
        from security.extraction.sink import QuerySink, flush_at_shutdown

        class Client:
            def send_message_batch(self, *, QueueUrl, Entries):
                with open({str(sent)!r}, "a") as out:
                    out.write(json.dumps([json.loads(e["MessageBody"])["request_id"]
                                          for e in Entries]) + "\\n")
                return {{"Successful": [{{"Id": e["Id"]}} for e in Entries]}}

        sink = QuerySink(client=Client(), queue_url="q")
        def report(delivery):
            with open({str(sent)!r}, "a") as out:
                out.write(json.dumps(delivery.position() | {{"lost": list(delivery.lost)}}) + "\\n")
        flush_at_shutdown(sink, report)
        for i in range(3):
            sink.send(principal_id="key#t", model="iris", request_id=f"r{{i}}", rows=[[1.0]])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), **PATH_ENV}  # the 3.13 run: its own path
    result = subprocess.run(
        [PYTHON, "-c", script], env=env, capture_output=True, timeout=60, check=False
    )
    # then the buffer left once and was reported (nothing lost, all three sent), and the process
    # still ended by SIGTERM (the default action)
    assert result.returncode == -signal.SIGTERM, result.stderr.decode()
    batch, report = [json.loads(line) for line in sent.read_text().splitlines()]
    assert batch == ["r0", "r1", "r2"]
    assert report["lost"] == [] and (report["queued"], report["flushed"]) == (3, 3)
