"""Coinglass API v4, the server side: the CG-API-KEY header, the per-minute limit and
the plan's interval restrictions. REST only."""
from __future__ import annotations

from ...limits import Limiter
from ...venue import VenueProtocol
from . import rest

# keys refused when no --coinglass-key is set (placeholders people leave in a .env)
REJECTED_KEYS = {"", "your_key_here", "YOUR_API_KEY", "invalid", "changeme", "none", "null"}


class Protocol(VenueProtocol):
    name = "coinglass"
    rest = rest

    def __init__(self, sim):
        super().__init__(sim)
        cfg = sim.cfg
        self.key = cfg.coinglass_key
        self.limit = cfg.coinglass_limit
        self.plan = cfg.coinglass_plan
        self.real_errors = cfg.coinglass_errors == "real"
        self.limiter = Limiter(cfg.coinglass_limit, 60)
        self.auth_fail = 0                      # the `coinglass_auth` fault: keys still to reject

    def error_body(self, status: int) -> str:
        msg = {429: "Too Many Requests", 401: "Invalid API key"}.get(status, "Internal Server Error")
        return rest.error_body(str(status), msg)

    def bad_key(self, out: dict):
        """A refused key in the shape `--coinglass-errors` selects."""
        if self.real_errors:
            return rest.BAD_KEY_STATUS, rest.error_body(*rest.BAD_KEY_REAL), out
        return 401, rest.error_body("401", "Invalid API key"), out

    def gate(self, headers, path: str, params: dict, now: float, mono: float):
        key = headers.get("CG-API-KEY")
        out = {"API-KEY-MAX-LIMIT": str(self.limit)}
        if self.auth_fail > 0 and key:
            self.auth_fail -= 1
            return self.bad_key(out)
        if not key:
            return 401, rest.error_body("401", "API key missing"), out
        want = self.key
        if (want is not None and key != want) or (want is None and key in REJECTED_KEYS):
            return self.bad_key(out)
        used = self.limiter.add(1, now)
        out["API-KEY-USE-LIMIT"] = str(used)
        if used > self.limit:
            out["Retry-After"] = str(self.limiter.reset_in(now))
            return 429, rest.error_body("429", "Too Many Requests"), out
        iv = params.get("interval")
        plan = self.plan
        if iv and not rest.plan_allows(plan, iv):
            if self.real_errors:
                return rest.PLAN_REFUSAL_STATUS, rest.error_body(*rest.PLAN_REFUSAL_REAL), out
            return 401, rest.error_body(
                "401", f"Upgrade plan: interval {iv} is not available on the {plan.capitalize()} plan "
                       f"(minimum {rest.PLANS[plan]})"), out
        return None, None, out

    def apply_fault(self, f: dict) -> bool:
        if f["kind"] != "coinglass_auth":
            return False
        self.auth_fail += f["count"]
        return True

    def clear_faults(self) -> None:
        self.auth_fail = 0

    def add_stats(self, body: dict) -> None:
        body["faults"]["pending"]["coinglass_auth"] = self.auth_fail
