"""`mlmoat local invoke` leaves the build output as it was: no ``__pycache__`` written into it.

``-I`` makes Python ignore ``PYTHONDONTWRITEBYTECODE``, so the worker needs ``-B``: otherwise
every local run compiles the function's code and layers into ``.aws-sam/build``. (The Lambda build
carries the cp313 byte-code ``make build`` compiles; a local run must not add to it.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from echo_app import lay_out_echo_app


def test_a_local_invoke_writes_no_bytecode_into_the_build(tmp_path: Path) -> None:
    # given the echo app laid out as a build, with no byte-code in it
    template = lay_out_echo_app(tmp_path)
    build = tmp_path / ".aws-sam" / "build"
    assert not list(build.rglob("__pycache__"))
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {
                "resource": "/echo/{name}",
                "path": "/echo/bob",
                "httpMethod": "POST",
                "headers": {"Content-Type": "application/json"},
                "pathParameters": {"name": "bob"},
                "requestContext": {"requestId": "no-bytecode", "stage": "test"},
                "body": "{}",
                "isBase64Encoded": False,
            }
        )
    )
    # when a function (importing its code and a layer) is invoked
    result = subprocess.run(
        [sys.executable, "-m", "mlmoat.cli", "local", "--template", str(template), "invoke",
         "EchoFunction", "-e", str(event), "--no-build"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["statusCode"] == 201
    # then nothing was compiled into the build output
    assert not list(build.rglob("__pycache__")), sorted(map(str, build.rglob("__pycache__")))
