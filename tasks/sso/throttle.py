"""Failed password attempts counted per login name and per client address (pure; the clock
is given). Past the limit, sign-in is refused without asking the directory until the oldest
counted failure leaves the window, so guessing a password costs the attacker the window."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable


class Throttle:
    """Sliding windows of failures: ``failures_per_user`` per login, ``failures_per_address``
    per address, each over ``window`` seconds."""

    def __init__(
        self,
        failures_per_user: int,
        failures_per_address: int,
        window: float,
        clock: Callable[[], float],
    ) -> None:
        self.limits = {"user": failures_per_user, "address": failures_per_address}
        self.window = window
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    def wait(self, login: str, address: str) -> float:
        """Seconds until ``login`` may try again from ``address`` (0: now)."""
        now = self.clock()
        waits = [0.0]
        for key in (("user", login.casefold()), ("address", address)):
            times = self._recent(key, now)
            if len(times) >= self.limits[key[0]]:
                waits.append(times[0] + self.window - now)
        return max(waits)

    def failed(self, login: str, address: str) -> None:
        """Count a failed attempt for both the login and the address."""
        now = self.clock()
        for key in (("user", login.casefold()), ("address", address)):
            self._recent(key, now).append(now)

    def succeeded(self, login: str) -> None:
        """A right password clears the login's failures (not the address's)."""
        self._failures.pop(("user", login.casefold()), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times
