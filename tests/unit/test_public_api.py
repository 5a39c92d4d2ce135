"""The security package's top-level names are pinned: changing them is a deliberate act.

They are the error tree and the settings; everything else is imported from its module, as the
handlers and the tooling do (nothing in the repository imported the old lazy re-exports).
"""

from __future__ import annotations

import security

PINNED = {
    "AdversarialInputError",
    "AuthenticationError",
    "ConflictError",
    "DependencyUnavailableError",
    "ForbiddenError",
    "InvalidPayloadError",
    "MalformedBodyError",
    "ModelIntegrityError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RateSpec",
    "SecretUnavailableError",
    "SecurityError",
    "Settings",
    "SettingsError",
    "StoreUnavailableError",
    "UnsupportedMediaTypeError",
}


def test_all_is_pinned() -> None:
    assert set(security.__all__) == PINNED
    assert len(security.__all__) == len(set(security.__all__))


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in security.__all__:
        value = getattr(security, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        security.not_a_name  # noqa: B018
    except AttributeError:
        pass
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_imports_no_framework_model_or_sdk() -> None:
    # given a fresh interpreter, when only `security` is imported, then none of the heavy
    # packages the functions use was imported with it
    import json
    import subprocess

    from interpreter import PATH_ENV, PYTHON

    probe = (
        "import json, sys, security\n"
        "heavy = {'fastapi', 'starlette', 'pydantic', 'numpy', 'onnxruntime', 'botocore',\n"
        "         'boto3', 'aws_lambda_powertools', 'jwt', 'cryptography'}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", probe], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", **PATH_ENV},
    )  # fmt: skip
    assert json.loads(done.stdout) == []
