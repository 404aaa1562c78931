"""The threshold grammar of `--threshold`: fixed:VALUE or dynamic:cost=C,k=K,vol_window=SECONDS (pure)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_THRESHOLD = "fixed:0.001"


@dataclass(frozen=True)
class Threshold:
    policy: str = "fixed"          # fixed | dynamic
    value: float = 0.001           # fixed: the return threshold
    cost: float = 0.001            # dynamic: r_t = cost + k * sigma_1s * sqrt(horizon)
    k: float = 1.0
    vol_window: int = 300          # dynamic: seconds of 1 s returns ending at t0

    @property
    def spec(self) -> str:
        if self.policy == "fixed":
            return f"fixed:{self.value:g}"
        return f"dynamic:cost={self.cost:g},k={self.k:g},vol_window={self.vol_window}"

    def as_dict(self) -> dict[str, Any]:
        if self.policy == "fixed":
            return {"policy": "fixed", "value": self.value}
        return {"policy": "dynamic", "cost": self.cost, "k": self.k, "vol_window_s": self.vol_window,
                "formula": "r_t = cost + k * std(1 s log returns of market_1s close over (t0 - vol_window, t0]) "
                           "* sqrt(horizon_sec)"}

    @classmethod
    def parse(cls, text: str) -> "Threshold":
        s = text.strip()
        policy, _, rest = s.partition(":")
        policy = policy.strip().lower()
        if policy == "fixed":
            if not rest.strip():
                return cls()
            v = finite(rest.strip(), "fixed threshold")
            if v < 0:
                raise ValueError("fixed threshold must be >= 0")
            return cls(policy="fixed", value=v)
        if policy == "dynamic":
            params: dict[str, float] = {}
            for part in filter(None, (p.strip() for p in rest.split(","))):
                key, eq, val = part.partition("=")
                key = key.strip()
                if not eq or key not in ("cost", "k", "vol_window"):
                    raise ValueError(f"unknown dynamic parameter {part!r} (use cost=, k=, vol_window=)")
                params[key] = finite(val.strip(), key)
            vw = params.get("vol_window", 300)
            if vw != int(vw) or vw < 2:
                raise ValueError("vol_window must be an integer number of seconds >= 2")
            if params.get("cost", 0.001) < 0 or params.get("k", 1.0) < 0:
                raise ValueError("cost and k must be >= 0")
            return cls(policy="dynamic", cost=params.get("cost", 0.001), k=params.get("k", 1.0),
                       vol_window=int(vw))
        raise ValueError(f"{text!r}: use fixed:VALUE or dynamic:cost=C,k=K,vol_window=SECONDS")


def finite(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{what}: must be finite")
    return v
