"""AdminFunction: the ``/admin/keys`` API behind the ``admin`` scope.

Thin by design: settings are read once and ``security.wiring`` assembles the function at init;
Mangum adapts API Gateway events. The rules live in ``security.admin`` (``KeyAdmin``), the
routes in ``security.api.admin``.
"""

from __future__ import annotations

import os

from security.settings import Settings
from security.wiring import admin_function

function = admin_function(Settings.from_env(os.environ))
settings, app, hooks = function.settings, function.app, function.hooks
handler = function.lambda_handler()
