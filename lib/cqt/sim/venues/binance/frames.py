"""Binance USD-M futures WebSocket events, formatted from the model's blocks.

Events are bare JSON as the raw ``/ws/`` path sends them; prices and quantities
are strings from integer price units and lot steps (the symbol's precision), times
integer ms. Every served symbol has the streams `<symbol>@aggTrade`, `@markPrice@1s`,
`@markPrice` (3 s), `@bookTicker`, `@forceOrder`.
"""
from __future__ import annotations

from ...blocks import Block

SYMBOL = "BTCUSDT"
AGG = "btcusdt@aggTrade"
MARK1 = "btcusdt@markPrice@1s"
MARK3 = "btcusdt@markPrice"
BOOK = "btcusdt@bookTicker"
FORCE = "btcusdt@forceOrder"
TRADE_STREAM = AGG                     # default target of the gap and malformed faults in a replay
KINDS = ("aggTrade", "markPrice@1s", "bookTicker", "forceOrder")      # a caller's default per symbol


def streams_of(symbol: str, kinds=KINDS) -> tuple[str, ...]:
    """'ETHUSDT' -> ('ethusdt@aggTrade', 'ethusdt@markPrice@1s', …)."""
    s = symbol.lower()
    return tuple(f"{s}@{k}" for k in kinds)


def trade_stream(symbol: str) -> str:
    return f"{symbol.lower()}@aggTrade"


def px2(cents: int) -> str:
    """Binance price from integer cents: '67123.40'."""
    return f"{cents // 100}.{cents % 100:02d}"


def qty3(milli: int) -> str:
    """Binance quantity from integer thousandths: '0.014'."""
    return f"{milli // 1000}.{milli % 1000:03d}"


def fixed(units: int, dec: int) -> str:
    """An integer count of 10**-dec as Binance writes it: fixed(1234, 2) -> '12.34'."""
    if dec == 0:
        return str(units)
    d = 10 ** dec
    return f"{units // d}.{units % d:0{dec}d}"


class Frames:
    """Formats blocks of one model (stateless for Binance)."""

    def __init__(self, model):
        self.model = model
        self.symbols = model.binance_symbols
        self.streams = tuple(s for sym in self.symbols for s in streams_of(sym))
        self.all_streams = self.streams + tuple(f"{sym.lower()}@markPrice" for sym in self.symbols)
        self.trade_stream = trade_stream(self.symbols[0])     # default target of gap and malformed
        self.trade_streams = {sym: trade_stream(sym) for sym in self.symbols}
        self._decs = {sym: (model.by_symbol[sym].spec.pdec, model.by_symbol[sym].spec.qdec) for sym in self.symbols}

    def format(self, b: Block) -> list:
        """[(ts, stream, raw, aggTrade id or None)] of a block, sorted."""
        items = []
        for si, sym in enumerate(self.symbols):
            self._format_symbol(b, sym, si, items)
        items.sort()
        return [(it[0], it[4], it[5], it[6]) for it in items]

    def _format_symbol(self, b: Block, sym: str, si: int, items: list) -> None:
        low = sym.lower()
        agg, mark1, mark3, book, force = (f"{low}@aggTrade", f"{low}@markPrice@1s", f"{low}@markPrice",
                                          f"{low}@bookTicker", f"{low}@forceOrder")
        pdec, qdec = self._decs[sym]
        if pdec == 2 and qdec == 3:             # BTC's precision: the fast path
            def px(c):
                return f"{c // 100}.{c % 100:02d}"

            def qt(q):
                return f"{q // 1000}.{q % 1000:03d}"
        else:
            def px(c):
                return fixed(c, pdec)

            def qt(q):
                return fixed(q, qdec)
        for seq, (a, pc, qm, f, last_id, T, m, e) in enumerate(b.bn_trades[sym]):
            items.append((e, 1, si, seq, agg,
                          f'{{"e":"aggTrade","E":{e},"a":{a},"s":"{sym}","p":"{px(pc)}",'
                          f'"q":"{qt(qm)}","f":{f},"l":{last_id},"T":{T},'
                          f'"m":{"true" if m else "false"}}}', a))
        for seq, (e, T, u, bc, bq, ac, aq) in enumerate(b.bn_books[sym]):
            items.append((e, 2, si, seq, book,
                          f'{{"e":"bookTicker","u":{u},"s":"{sym}","b":"{px(bc)}",'
                          f'"B":"{qt(bq)}","a":"{px(ac)}",'
                          f'"A":"{qt(aq)}","T":{T},"E":{e}}}', None))
        e, mark, index, settle, rate, next_t = b.bn_mark[sym]
        raw = (f'{{"e":"markPriceUpdate","E":{e},"s":"{sym}","p":"{mark:.8f}","i":"{index:.8f}",'
               f'"P":"{settle:.8f}","r":"{rate:.8f}","T":{next_t}}}')
        items.append((e, 0, si, 0, mark1, raw, None))
        if b.k % 3 == 0:
            items.append((e, 0, si, 1, mark3, raw, None))
        fo = b.bn_force[sym]
        if fo is not None:
            e, T, side, qm, pc, ac = fo
            q = qt(qm)
            items.append((e, 3, si, 0, force,
                          f'{{"e":"forceOrder","E":{e},"o":{{"s":"{sym}","S":"{side}","o":"LIMIT",'
                          f'"f":"IOC","q":"{q}","p":"{px(pc)}","ap":"{px(ac)}","X":"FILLED",'
                          f'"l":"{q}","z":"{q}","T":{T}}}}}', None))
