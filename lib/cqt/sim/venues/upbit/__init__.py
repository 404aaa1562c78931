"""cqt-sim: Upbit quotation (frames, rest, protocol)."""
