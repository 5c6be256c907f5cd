"""A circuit breaker per ad server: stop asking a server that keeps failing.

A live break cannot wait on a dead ad server: after ``failure_threshold``
consecutive failures (transport errors, timeouts, 5xx) the circuit *opens* and
every request fails fast (the break falls back to slate or content at once).
After ``cool_down`` seconds one request is let through as a probe
(*half-open*); its success closes the circuit, its failure opens it for
another cool-down. The classic shape (Nygard, "Release It!", the Circuit
Breaker pattern), with the clock injected so tests run it on a fake one.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: The ``stitcher_ad_circuit_state`` gauge's value for each state.
GAUGE_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe.

    ``on_change(state)`` is called on every transition (metrics, logs).
    """

    def __init__(self, *, failure_threshold: int = 5, cool_down: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[CircuitState], None] | None = None) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.cool_down = cool_down
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> CircuitState:
        return self._state

    def retry_at(self) -> float | None:
        """When an open circuit lets its probe through (None unless open)."""
        return self._opened_at + self.cool_down if self._state is CircuitState.OPEN else None

    def allow(self) -> bool:
        """May a request be sent now? An open circuit past its cool-down turns
        half-open and admits exactly one probe until that probe reports back."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            if self._clock() < self._opened_at + self.cool_down:
                return False
            self._set(CircuitState.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self._state is CircuitState.HALF_OPEN or (
                self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def release(self) -> None:
        """An admitted request that ended without a verdict (cancelled, refused
        locally): a half-open circuit may probe again."""
        self._probing = False

    def _set(self, state: CircuitState) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
