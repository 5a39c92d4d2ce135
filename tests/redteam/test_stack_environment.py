"""The red team's stack runs the functions with the settings its measurements assume.

The local workers apply an override only to a variable the template declares (as SAM's
``--env-vars`` does), so a setting the stack passes that the template does not declare is
silently the template's default instead. ``SECURITY_EXTRACTION_SEND_MAX_DELAY`` was such a
setting: the red team's predict environments buffered up to a second of queries, the drain after
a request missed them, and a stream's last rows could reach the monitor after its detection row
was read (a boundary-probing run on breast-cancer-forest reported "not flagged within 300 rows"
where the monitor fires at row 254).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmoat.local.template import Template
from mlmoat.local.workers import FunctionLayout
from mlmoat.redteam.stack import SERVED_SETTINGS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("function", "name"),
    [
        ("PredictFunction", "SECURITY_EXTRACTION_SEND_MAX_DELAY"),
        ("PredictFunction", "SECURITY_MAX_ROWS"),
        ("MonitorFunction", "SECURITY_MONITOR_FLUSH_SECONDS"),
    ],
)
def test_each_setting_the_red_team_needs_reaches_its_function(function: str, name: str) -> None:
    template = Template(REPO / "template.yaml", endpoint="http://127.0.0.1:1", region="us-east-1")
    value = SERVED_SETTINGS[name]
    layout = FunctionLayout(
        template, REPO / ".aws-sam" / "build", function, env_overrides={function: {name: value}}
    )
    assert layout.environment()[name] == value
