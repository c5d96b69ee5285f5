"""Health probes for orchestrators, framework-free (the Tornado and sprockets.http adapters
serve them as ``LivenessRequestHandler``, ``ReadinessRequestHandler`` and
``StartupRequestHandler``). None takes a connection from the pool or sends a statement.

.. versionadded:: 0.3
"""

from __future__ import annotations

from ._probes import (
    MAX_LOOP_LAG,
    RECOVERY_GRACE,
    Heartbeat,
    Probe,
    liveness,
    loop_lag,
    readiness,
    startup,
)

__all__ = [
    "MAX_LOOP_LAG",
    "RECOVERY_GRACE",
    "Heartbeat",
    "Probe",
    "liveness",
    "loop_lag",
    "readiness",
    "startup",
]
