"""The load test's plan: how big the run is and which principals it drives (keys, JWT subjects)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import boto3

from mlmoat.local.stack import KeyPlan

__all__ = ["JWT_AUDIENCE", "JWT_ISSUER", "JWT_PARAMETER", "KeyPlan", "LoadConfig", "LoadKey",
           "jwt_subjects", "plan_keys"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """How big and how long the run is; every bound is explicit."""

    instances: int = 3
    clients: int = 8
    keys: int = 24
    duration_s: float = 30.0
    max_requests: int = 20000
    seed: int = 7
    model: str = "iris"
    batch_share: float = 0.3
    jwt_subjects: int = 4
    work_dir: str | None = None


def plan_keys(count: int, rng: random.Random) -> list[KeyPlan]:
    """A mix of keys where the budget binds, the minute window binds, both, or a 1 s window."""
    plans: list[KeyPlan] = []
    for index in range(count):
        kind = ("budget", "minute", "both", "second")[index % 4]
        if kind == "budget":
            plans.append(KeyPlan(kind, rate=600, window_s=60, budget=rng.randint(8, 30)))
        elif kind == "minute":
            plans.append(KeyPlan(kind, rate=rng.randint(5, 14), window_s=60, budget=1_000_000))
        elif kind == "both":
            rate = rng.randint(6, 12)
            plans.append(KeyPlan(kind, rate=rate, window_s=60, budget=rate + rng.randint(2, 8)))
        else:
            plans.append(KeyPlan(kind, rate=rng.randint(2, 4), window_s=1, budget=1_000_000))
    return plans


@dataclass(frozen=True, slots=True)
class LoadKey:
    """A principal under load: an API key, or a JWT subject (``token`` set), and its plan.

    ``key_id`` names it in samples and messages (the key id, or the token's subject); ``pk`` is
    its item in the security table (``key#<id>`` or ``sub#<issuer-hash>#<subject>``).
    """

    key_id: str
    api_key: str
    plan: KeyPlan
    token: str | None = None
    subject_pk: str | None = None

    @property
    def pk(self) -> str:
        """The principal's item in the security table."""
        return self.subject_pk or f"key#{self.key_id}"


JWT_ISSUER = "https://issuer.load.mlmoat.test"
JWT_AUDIENCE = "mlmoat-load"
JWT_PARAMETER = "/mlmoat/load/jwt-public-key"


def jwt_subjects(
    env: Mapping[str, str], count: int, rng: random.Random, *, seed: int, work: Path, valid_s: float
) -> tuple[list[LoadKey], Path]:
    """JWT subjects with small limits, and the ``--env-vars`` file that turns JWT on.

    A fresh RSA key signs the tokens; its public half goes to SSM on the local endpoint, where
    the function fetches it. Each token narrows its subject's limits with the policy claims
    (``mlmoat:rate_limit``, ``mlmoat:budget``), which may not exceed the defaults (60/minute,
    10 000 rows). The subject's counters live on ``sub#<issuer-hash>#<subject>``, created by its
    first counted request, whichever instance serves it.
    """
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from security.tokens import issuer_hash

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    ssm = boto3.client(
        "ssm",
        endpoint_url=env["AWS_ENDPOINT_URL_DYNAMODB"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    ssm.put_parameter(Name=JWT_PARAMETER, Value=pem, Type="String", Overwrite=True)
    env_file = work / "jwt-env-vars.json"
    settings = {
        "SECURITY_JWT_ISSUER": JWT_ISSUER,
        "SECURITY_JWT_AUDIENCE": JWT_AUDIENCE,
        "SECURITY_JWT_PUBLIC_KEY_PARAMETER": JWT_PARAMETER,
    }
    env_file.write_text(json.dumps({"PredictFunction": settings}))
    now = int(time.time())
    subjects: list[LoadKey] = []
    for index in range(count):
        if index % 2 == 0:
            plan = KeyPlan("jwt-budget", rate=60, window_s=60, budget=rng.randint(8, 30))
        else:
            plan = KeyPlan("jwt-minute", rate=rng.randint(5, 14), window_s=60, budget=10000)
        subject = f"load-{seed}-subject-{index}"
        claims = {
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + int(valid_s) + 900,
            "scope": "predict:iris",
            "mlmoat:rate_limit": plan.rate_text,
            "mlmoat:budget": plan.budget,
        }
        token = jwt.encode(claims, private, algorithm="RS256")
        pk = f"sub#{issuer_hash(JWT_ISSUER)}#{subject}"
        subjects.append(LoadKey(subject, "", plan, token=token, subject_pk=pk))
    return subjects, env_file
