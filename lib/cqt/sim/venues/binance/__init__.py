"""cqt-sim: Binance USD-M futures (frames, rest, protocol)."""
