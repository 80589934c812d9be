"""Failed password attempts counted per login name and per client address (pure; the clock
is given). Past the limit, sign-in is refused without asking the directory until the oldest
counted failure leaves the window, so guessing a password costs the attacker the window.

An attempt counts as a failure from the moment it starts (:meth:`Throttle.attempt`) and is
forgiven only when the password was right: forty guesses sent at once cannot all slip past
the check before the first failure is counted. Logins are compared after NFKC and case
folding; at most ``max_keys`` logins and addresses are tracked (the oldest forgotten first).
"""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable

Key = tuple[str, str]


def _login_key(login: str) -> Key:
    return ("user", unicodedata.normalize("NFKC", login).casefold())


class Throttle:
    """Sliding windows of failures: ``failures_per_user`` per login, ``failures_per_address``
    per address, each over ``window`` seconds; thread-safe."""

    def __init__(
        self,
        failures_per_user: int,
        failures_per_address: int,
        window: float,
        clock: Callable[[], float],
        max_keys: int = 100_000,
    ) -> None:
        self.limits = {"user": failures_per_user, "address": failures_per_address}
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def attempt(self, login: str, address: str) -> float:
        """Start an attempt: 0 and counted as a failure until :meth:`forgive`, or the seconds
        to wait (nothing counted)."""
        with self._lock:
            now = self.clock()
            wait = self._wait(login, address, now)
            if wait == 0:
                self._add(login, address, now)
            return wait

    def forgive(self, login: str, address: str) -> None:
        """The attempt had the right password: the login's failures are cleared and the
        attempt no longer counts against the address."""
        with self._lock:
            self._failures.pop(_login_key(login), None)
            times = self._failures.get(("address", address))
            if times:
                times.pop()

    def cancel(self, login: str, address: str) -> None:
        """The attempt could not be judged (the directory was down): it does not count."""
        with self._lock:
            for key in (_login_key(login), ("address", address)):
                times = self._failures.get(key)
                if times:
                    times.pop()

    def _wait(self, login: str, address: str, now: float) -> float:
        waits = [0.0]
        for key in (_login_key(login), ("address", address)):
            times = self._recent(key, now)
            if times is not None and len(times) >= self.limits[key[0]]:
                waits.append(times[0] + self.window - now)
        return max(waits)

    def _add(self, login: str, address: str, now: float) -> None:
        for key in (_login_key(login), ("address", address)):
            times = self._failures.get(key)
            if times is None:
                times = self._failures[key] = deque()
            else:
                self._failures.move_to_end(key)
            times.append(now)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def _recent(self, key: Key, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
