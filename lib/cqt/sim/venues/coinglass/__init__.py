"""cqt-sim: Coinglass API v4 (rest, protocol; no WebSocket)."""
