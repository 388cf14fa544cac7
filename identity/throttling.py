"""Sign-in throttles for `POST /api/token/`: failed attempts per account and per address.

DRF's SimpleRateThrottle on Django's cache (a database table, so every server
process sharing DATABASE_URL shares the counts). Only failures count: every
attempt is recorded before the password is checked, so parallel guesses cannot
slip past the limit together, and the record is withdrawn again unless the
answer was a 401. A user who signs in correctly never spends their allowance.
"""

from __future__ import annotations

import hashlib
from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from identity import conf, metrics


class FailedSignInThrottle(SimpleRateThrottle):
    """Counts attempts that end in a 401; `settle` withdraws the others."""

    recorded_at: float | None = None
    # Set by SimpleRateThrottle.__init__ from the rate (its stubs do not declare them).
    num_requests: int
    duration: int

    def allow_request(self, request: Request, view: Any) -> bool:
        # Only a POST is a sign-in; another method is answered 405 without a body read.
        if request.method != "POST" or super().allow_request(request, view):
            return True
        metrics.RATE_LIMITED.inc(str(self.scope))  # answered 429
        return False

    def get_rate(self) -> str | None:
        raise NotImplementedError

    def throttle_success(self) -> bool:
        self.recorded_at = self.now
        return super().throttle_success()

    def wait(self) -> float:
        """Seconds until the oldest attempt that keeps the count at the limit leaves the window."""
        # The history is newest first; refusals are not recorded, so it is
        # longer than the limit only when concurrent attempts raced.
        leaving = self.history[self.num_requests - 1]
        return max(0.0, leaving + self.duration - self.now)

    def settle(self, failed: bool) -> None:
        """Keep this request's record if the sign-in failed, withdraw it otherwise."""
        if failed or self.recorded_at is None:
            return
        history = self.cache.get(self.key, [])
        if self.recorded_at in history:
            history.remove(self.recorded_at)
            self.cache.set(self.key, history, self.duration)


class SignInAccountThrottle(FailedSignInThrottle):
    """Failed sign-ins per username (IDENTITY_LOGIN_RATE_PER_ACCOUNT)."""

    scope = "login_account"

    def get_rate(self) -> str | None:
        return conf.login_rate_per_account()

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        data = request.data  # a malformed body raises ParseError here: a 400
        username = data.get("username") if isinstance(data, dict) else None
        if not isinstance(username, str) or not username:
            return None  # a 400 follows: no password is checked
        # Hashed: usernames may hold characters cache keys must not.
        digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": digest}


class SignInAddressThrottle(FailedSignInThrottle):
    """Failed sign-ins per client address (IDENTITY_LOGIN_RATE_PER_ADDRESS)."""

    scope = "login_address"

    def get_rate(self) -> str | None:
        return conf.login_rate_per_address()

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        # REMOTE_ADDR, never X-Forwarded-For (DRF's get_ident trusts it unless
        # NUM_PROXIES is set): behind a proxy the server's --proxy-headers,
        # limited to trusted proxies, have already put the client's address here.
        address = request.META.get("REMOTE_ADDR") or "unknown"
        return self.cache_format % {"scope": self.scope, "ident": address}
