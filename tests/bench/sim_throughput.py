#!/usr/bin/env python3
"""Measure cqt-sim's flood throughput to one WebSocket client.

    .venv/bin/python tests/bench/sim_throughput.py                 # websocket-client reader
    .venv/bin/python tests/bench/sim_throughput.py --reader raw     # raw socket reader
    .venv/bin/python tests/bench/sim_throughput.py --rate 50000 --seconds 10

Starts `cqt-sim --flood RATE` as a subprocess, connects one client to
/market/ws/btcusdt@aggTrade, discards a warm-up second, then counts whole
messages for --seconds and checks the aggregate ids are contiguous.

Readers:
  wsclient  websocket-client `recv_data()` with skip_utf8_validation=True (what a
            collector would use); bound by the Python frame parser on the client.
  raw       a plain socket reading 1 MiB at a time and walking the frame headers;
            shows what the sim itself can push (the client is cheap).
The sim process's CPU time over the window is reported too (psutil).
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))          # tests/ (simproc)
from simproc import start_sim  # noqa: E402


def read_wsclient(url: str, seconds: float, warmup: float) -> tuple[int, float, int, int]:
    import websocket
    ws = websocket.create_connection(url, timeout=10, skip_utf8_validation=True, suppress_origin=True)
    end_warm = time.monotonic() + warmup
    while time.monotonic() < end_warm:
        ws.recv_data()
    first = last = None
    n = 0
    gaps = 0
    t0 = time.monotonic()
    t_end = t0 + seconds
    while True:
        _op, data = ws.recv_data()
        n += 1
        if n & 1023 == 0 or n == 1:
            a = json.loads(data)["a"]
            if first is None:
                first = a
            last = a
            if time.monotonic() >= t_end:
                break
    dt = time.monotonic() - t0
    ws.close()
    if last - first + 1 != n:
        gaps = 1
    return n, dt, first, gaps


def read_raw(host: str, port: int, seconds: float, warmup: float) -> tuple[int, float, int, int]:
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /market/ws/btcusdt@aggTrade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    n = 0
    first = last = None
    counting = False
    t_warm = time.monotonic() + warmup
    t0 = t_end = 0.0
    pos = 0
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf = buf[pos:] + chunk
        pos = 0
        L = len(buf)
        while pos + 2 <= L:
            b1 = buf[pos + 1] & 0x7F
            if b1 < 126:
                h, ln = 2, b1
            elif b1 == 126:
                if pos + 4 > L:
                    break
                h, ln = 4, struct.unpack_from("!H", buf, pos + 2)[0]
            else:
                if pos + 10 > L:
                    break
                h, ln = 10, struct.unpack_from("!Q", buf, pos + 2)[0]
            if pos + h + ln > L:
                break
            if counting:
                n += 1
                if n == 1 or n & 4095 == 0:
                    a = json.loads(buf[pos + h: pos + h + ln])["a"]
                    first = a if first is None else first
                    last = a
            pos += h + ln
        now = time.monotonic()
        if not counting and now >= t_warm:
            counting, t0, t_end = True, now, now + seconds
        elif counting and now >= t_end and n > 4096:
            break
    dt = time.monotonic() - t0
    s.close()
    gaps = 0 if (last - first) < n else 1
    return n, dt, first, gaps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=200_000, help="--flood N given to the sim (msg/s cap)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--reader", choices=("wsclient", "raw"), default="wsclient")
    ap.add_argument("--tmp", default="/tmp/cqt-sim-bench")
    args = ap.parse_args()
    import psutil
    with start_sim(args.tmp, "--flood", str(args.rate), "--history", "30", "--log-level", "WARNING") as sim:
        proc = psutil.Process(sim.proc.pid)
        url = sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@aggTrade"
        cpu0 = proc.cpu_times()
        if args.reader == "wsclient":
            n, dt, first, gaps = read_wsclient(url, args.seconds, args.warmup)
        else:
            n, dt, first, gaps = read_raw("127.0.0.1", sim.port, args.seconds, args.warmup)
        cpu1 = proc.cpu_times()
    sim_cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / (dt + args.warmup)
    rate = n / dt
    print(f"reader={args.reader} flood={args.rate} messages={n} seconds={dt:.2f} "
          f"rate={rate:,.0f} msg/s sim_cpu={sim_cpu * 100:.0f}% ids_contiguous={'yes' if not gaps else 'NO'}")
    return 0 if not gaps else 1


if __name__ == "__main__":
    sys.exit(main())
