"""The bytes a function writes to CloudWatch Logs, read from its stdout (one log event a line).

``mlmoat bench`` sends each function process's stdout to a file, as Lambda sends it to
CloudWatch Logs; ``read_log`` splits it into the audit records of single-row predictions
answered 200 (the figure ``mlmoat.bench.cost`` prices per prediction), the other audit records
(batches, refusals: not priced) and every line that is not an audit record (anything else the
function printed: priced per invocation).
Bytes are UTF-8 bytes of the line without its newline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

AUDIT_MESSAGE = "audit"


@dataclass
class LogBytes:
    """One stdout file's bytes: each single-row 200 audit record's, the other audit records',
    and the lines that are not audit records."""

    audit_record_bytes: list[int] = field(default_factory=list)
    other_audit_bytes: int = 0
    other_bytes: int = 0


def read_log(path: Path) -> LogBytes:
    """Split ``path`` (a function's stdout) into single-row allowed audit records and the rest."""
    found = LogBytes()
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("message") != AUDIT_MESSAGE:
            found.other_bytes += len(raw)
        elif record.get("rows") == 1 and record.get("status") == 200:
            found.audit_record_bytes.append(len(raw))
        else:
            found.other_audit_bytes += len(raw)
    return found
