"""Who is calling the labelling service: a role taken from the token, never from a name, and a brake
on guessing tokens.

    logins = Logins(project.tokens, project.admin_token)
    login = logins.check(token, client="10.0.0.7")   # Login(role="assessor", name="ann"), or HTTP 401/429

Every token is compared with every known one in constant time. After `free_failures` failed logins
from one client address within `window` seconds, that address waits (HTTP 429, Retry-After) for
1 s, then 2, 4 ... up to `max_wait` s per further failure; a success clears its count.
"""

from __future__ import annotations

import hmac
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# names an assessor may not take, nor anything that looks like them (`Admin`, `adm1n`, `ad_min`)
RESERVED_NAMES = ("admin", "administrator", "root", "system", "tunelab")
_LOOKALIKE = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "5": "s", "3": "e", "7": "t"})


def skeleton(name: str) -> str:
    """What a name looks like to a reader: case, separators and look-alike digits folded."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return re.sub(r"[\s_.@-]", "", folded).translate(_LOOKALIKE)


def confusable_names(names: list[str]) -> str | None:
    """Why these assessor names could be mistaken for each other or for the admin, or None."""
    seen: dict[str, str] = {}
    reserved = {skeleton(r): r for r in RESERVED_NAMES}
    for name in names:
        key = skeleton(name)
        if key in reserved:
            return f"assessor name {name!r} looks like {reserved[key]!r}, which no assessor may be called"
        if key in seen:
            return f"assessor names {seen[key]!r} and {name!r} are too alike to tell apart in reports"
        seen[key] = name
    return None


@dataclass(frozen=True)
class Login:
    role: Literal["admin", "assessor"]
    name: str | None  # the assessor's name; None for the admin


class Logins:
    def __init__(
        self,
        tokens: dict[str, str],
        admin_token: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        free_failures: int = 5,
        window: float = 60.0,
        max_wait: float = 300.0,
    ):
        self._known = [(t.encode(), Login("assessor", name)) for t, name in tokens.items()]
        self._known.append((admin_token.encode(), Login("admin", None)))
        self.clock, self.free, self.window, self.max_wait = clock, free_failures, window, max_wait
        self._failures: dict[str, list[float]] = {}  # client -> times of recent failed logins

    def check(self, token: str | None, client: str) -> Login:
        from fastapi import HTTPException  # here: project files import this module without the server

        now = self.clock()
        wait = self._wait(client, now)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many failed logins from this address; try again in {wait:.0f} s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        if token is None:
            raise HTTPException(
                401, "log in: send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
            )
        found = None
        for known, login in self._known:  # no early exit: the time taken says nothing about the match
            if hmac.compare_digest(token.encode(), known):
                found = login
        if found is None:
            self._fail(client, now)
            raise HTTPException(401, "unknown token", {"WWW-Authenticate": "Bearer"})
        self._failures.pop(client, None)
        return found

    def _wait(self, client: str, now: float) -> float:
        recent = [t for t in self._failures.get(client, []) if now - t < self.window]
        if len(recent) < self.free:
            return 0.0
        delay = min(self.max_wait, 2.0 ** (len(recent) - self.free))
        return recent[-1] + delay - now

    def _fail(self, client: str, now: float) -> None:
        if len(self._failures) > 10_000:  # many addresses: forget the oldest rather than grow without end
            self._failures.pop(next(iter(self._failures)))
        recent = [t for t in self._failures.get(client, []) if now - t < max(self.window, self.max_wait)]
        self._failures[client] = [*recent[-50:], now]
