"""cqt-sim: a local stand-in for Upbit, Binance USD-M futures and Coinglass.

`cqt.sim.model.MarketModel` is the deterministic market (its dynamics);
`cqt.sim.market.Market` is that market in the venues' wire formats, without sockets;
`cqt.sim.server` serves it over real sockets, each venue's protocol in
`cqt.sim.venues.<venue>`; `cqt.sim.cli.main` is the click command behind `bin/cqt-sim`.
See docs/sim.md.
"""
