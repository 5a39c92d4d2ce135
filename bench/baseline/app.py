"""The seed's naive recipe, assembled as a Lambda function: the baseline `mlmoat bench` measures.

Taken as the seed document (/work/shared/seed-securing-ml-apis.txt) writes it, pieced together
into one deployable app: FastAPI + Mangum, a static API key compared with
``secrets.compare_digest``, slowapi's ``60/minute`` per client IP held in process memory, the
seed's strict pydantic request schema, a joblib-dumped scikit-learn model, and 2-decimal
probabilities. Nothing here is mlmoat's: it is the thing mlmoat is compared with.
"""

from __future__ import annotations

import math
import os
import secrets

import joblib
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from mangum import Mangum
from pydantic import BaseModel, Field, field_validator
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

API_KEY_NAME = "X-API-Key"
VALID_API_KEY = os.environ.get("BASELINE_API_KEY", "super-secret-key-stored-in-env")
MODEL_PATH = os.environ.get(
    "BASELINE_MODEL_PATH", os.path.join(os.path.dirname(__file__), "model.joblib")
)

app = FastAPI()
limiter = Limiter(key_func=get_remote_address)
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

api_key_header = APIKeyHeader(name=API_KEY_NAME, auto_error=False)
model = joblib.load(MODEL_PATH)


def require_api_key(api_key: str = Security(api_key_header)) -> str:
    if api_key is None or not secrets.compare_digest(api_key, VALID_API_KEY):
        raise HTTPException(status_code=403, detail="Invalid or missing API key")
    return api_key


class SecurePredictRequest(BaseModel):
    features: list[float] = Field(..., min_length=4, max_length=4)

    @field_validator("features")
    @classmethod
    def no_inf_or_nan(cls, v: list[float]) -> list[float]:
        if any(math.isnan(x) or math.isinf(x) for x in v):
            raise ValueError("Feature values must be finite")
        if any(abs(x) > 1e6 for x in v):
            raise ValueError("Feature values out of expected range")
        return v


@app.post("/predict")
@limiter.limit("60/minute")  # max 60 requests per minute per IP
def predict(
    request: Request, body: SecurePredictRequest, api_key: str = Security(require_api_key)
) -> dict[str, object]:
    probabilities = model.predict_proba([body.features])[0]
    label = int(probabilities.argmax())
    # Output sanitisation as the seed advises: rounded 2-decimal probabilities.
    return {
        "prediction": label,
        "probabilities": {
            str(cls): round(float(p), 2)
            for cls, p in zip(model.classes_, probabilities, strict=True)
        },
    }


handler = Mangum(app, lifespan="off")
