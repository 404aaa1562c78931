"""Binance USD-M futures WebSocket events, formatted from the model's blocks.

Events are bare JSON as the raw ``/ws/`` path sends them; prices and quantities
are strings from integer cents and thousandths, times integer ms.
"""
from __future__ import annotations

from ...blocks import Block

SYMBOL = "BTCUSDT"
AGG = "btcusdt@aggTrade"
MARK1 = "btcusdt@markPrice@1s"
MARK3 = "btcusdt@markPrice"
BOOK = "btcusdt@bookTicker"
FORCE = "btcusdt@forceOrder"
STREAMS = (AGG, MARK1, BOOK, FORCE)            # what a caller gets when it names none
ALL_STREAMS = STREAMS + (MARK3,)               # everything the model makes (the server's pump)
TRADE_STREAM = AGG                             # default target of the gap and malformed faults


def px2(cents: int) -> str:
    """Binance price from integer cents: '67123.40'."""
    return f"{cents // 100}.{cents % 100:02d}"


def qty3(milli: int) -> str:
    """Binance quantity from integer thousandths: '0.014'."""
    return f"{milli // 1000}.{milli % 1000:03d}"


class Frames:
    """Formats blocks of one model (stateless for Binance)."""

    streams = STREAMS
    all_streams = ALL_STREAMS

    def __init__(self, model):
        self.model = model

    def format(self, b: Block) -> list:
        """[(ts, stream, raw, aggTrade id or None)] of a block, sorted."""
        items = []
        for seq, (a, pc, qm, f, last_id, T, m, e) in enumerate(b.bn_trades):
            items.append((e, 1, seq, AGG,
                          f'{{"e":"aggTrade","E":{e},"a":{a},"s":"BTCUSDT","p":"{pc // 100}.{pc % 100:02d}",'
                          f'"q":"{qm // 1000}.{qm % 1000:03d}","f":{f},"l":{last_id},"T":{T},'
                          f'"m":{"true" if m else "false"}}}', a))
        for seq, (e, T, u, bc, bq, ac, aq) in enumerate(b.bn_books):
            items.append((e, 2, seq, BOOK,
                          f'{{"e":"bookTicker","u":{u},"s":"BTCUSDT","b":"{bc // 100}.{bc % 100:02d}",'
                          f'"B":"{bq // 1000}.{bq % 1000:03d}","a":"{ac // 100}.{ac % 100:02d}",'
                          f'"A":"{aq // 1000}.{aq % 1000:03d}","T":{T},"E":{e}}}', None))
        e, mark, index, settle, rate, next_t = b.bn_mark
        raw = (f'{{"e":"markPriceUpdate","E":{e},"s":"BTCUSDT","p":"{mark:.8f}","i":"{index:.8f}",'
               f'"P":"{settle:.8f}","r":"{rate:.8f}","T":{next_t}}}')
        items.append((e, 0, 0, MARK1, raw, None))
        if b.k % 3 == 0:
            items.append((e, 0, 1, MARK3, raw, None))
        if b.bn_force is not None:
            e, T, side, qm, pc, ac = b.bn_force
            q = qty3(qm)
            items.append((e, 3, 0, FORCE,
                          f'{{"e":"forceOrder","E":{e},"o":{{"s":"BTCUSDT","S":"{side}","o":"LIMIT",'
                          f'"f":"IOC","q":"{q}","p":"{px2(pc)}","ap":"{px2(ac)}","X":"FILLED",'
                          f'"l":"{q}","z":"{q}","T":{T}}}}}', None))
        items.sort()
        return [(it[0], it[3], it[4], it[5]) for it in items]
