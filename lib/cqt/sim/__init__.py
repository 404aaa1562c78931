"""cqt-sim: a local stand-in for Upbit, Binance USD-M futures and Coinglass.

`cqt.sim.model.MarketModel` is the deterministic market (usable without sockets);
`cqt.sim.server` serves it over the real wire formats; `cqt.sim.cli.main` is the
click command behind `bin/cqt-sim`. See docs/sim.md.
"""
