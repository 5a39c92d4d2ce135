"""The framework floor: FastAPI + Mangum with one POST route that reads the body and does nothing.

``mlmoat bench`` times it warm, next to both stacks, so the security layer's own in-process cost
can be told apart from what FastAPI and Mangum cost any app on the same machine.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from mangum import Mangum

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> dict[str, bool]:
    await request.body()
    return {"ok": True}


handler = Mangum(app, lifespan="off")
