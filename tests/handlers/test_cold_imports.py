"""Cold-start imports of PredictFunction: what JWT verification costs only when it is configured.

PyJWT and cryptography cost ~80 ms of a cold start (docs/performance.md). boto3 (with
s3transfer) is never imported with JWT off: the clients are botocore's
(``security.wiring``). Each case imports
``handlers.predict`` in a fresh interpreter (as a cold start does) and lists which of those
modules ended up in ``sys.modules``. Building the app makes no AWS call, so no server is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from interpreter import PATH_ENV, PYTHON
from mlmoat.local.awsenv import DUMMY_CREDENTIALS

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
import handlers.predict  # noqa: F401  (builds the app, as a cold start does)
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"jwt", "cryptography", "boto3",
                                                               "s3transfer"})
print(json.dumps({"heavy": heavy, "jwt_enabled": handlers.predict.settings.jwt_enabled}))
"""


def _cold_import(extra: dict[str, str]) -> dict[str, object]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_DEFAULT_REGION": "us-east-1",
        **DUMMY_CREDENTIALS,
        # Unroutable on purpose: building the app must not call AWS.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "SECURITY_TABLE_NAME": "cold-imports",
        "SECURITY_MODEL_DIR": str(REPO / "models"),
        "SECURITY_DEFAULT_MODEL": "iris",
        "SECURITY_SQUEEZE_POLICY": "off",
        "POWERTOOLS_SERVICE_NAME": "mlmoat",
        "POWERTOOLS_METRICS_NAMESPACE": "mlmoat",
        **PATH_ENV,
        **extra,
    }
    done = subprocess.run(
        [PYTHON, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_predict_app_with_jwt_off_imports_neither_pyjwt_cryptography_nor_boto3() -> None:
    # given no JWT configuration, when the predict app is built at a cold start
    result = _cold_import({})
    # then neither PyJWT, cryptography nor boto3 was imported
    assert result == {"heavy": [], "jwt_enabled": False}


def test_predict_app_with_jwt_on_imports_the_verifier() -> None:
    # given JWT configured, when the app is built, then the verifier's modules are loaded
    # (the probe above can see them: the first test's empty list is not vacuous)
    result = _cold_import(
        {
            "SECURITY_JWT_ISSUER": "https://issuer.example",
            "SECURITY_JWT_AUDIENCE": "mlmoat",
            "SECURITY_JWT_PUBLIC_KEY_PARAMETER": "/mlmoat/jwt/public-key",
        }
    )
    # (Powertools' SSM provider, which fetches the public key, brings boto3)
    assert result == {"heavy": ["boto3", "cryptography", "jwt", "s3transfer"], "jwt_enabled": True}
