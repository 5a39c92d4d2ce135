"""PredictFunction: ``POST /predict`` and ``POST /models/{model}/predict``.

Thin by design: settings are read once and ``security.wiring`` assembles the function at init
(cold start); Mangum adapts API Gateway events to the ASGI app. Every rule lives in the
``security`` layer. SnapStart-ready: the wiring registers the after-restore hooks.
"""

from __future__ import annotations

import os

from security.settings import Settings
from security.wiring import predict_function

function = predict_function(Settings.from_env(os.environ))
settings, app, hooks = function.settings, function.app, function.hooks
handler = function.lambda_handler()
