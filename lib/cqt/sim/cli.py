"""`bin/cqt-sim`: run the local stand-in for Upbit, Binance USD-M futures and Coinglass.

    cqt-sim --port 0 --seed 7 --ports-file /tmp/sim.json
    cqt-sim --seed 7 --start 2026-01-01T00:00:00Z --speed 10 --history 600
    cqt-sim --replay capture.jsonl.gz --speed 0
    cqt-sim --flood 100000
    cqt-sim --symbols BTC,ETH,SOL

See docs/sim.md for endpoints, faults and the control API.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import sys

import click

from .. import exitcodes
from ..clicktypes import TIME

log = logging.getLogger("cqt-sim")


def _setup_logging(level: str) -> None:
    try:
        from ..runtime import setup_logging
        setup_logging("cqt-sim", level)
    except ImportError:                       # pragma: no cover - foundation not there yet
        logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _faults(ctx, param, values):
    from .faults import FaultError, validate
    out = []
    for v in values:
        try:
            spec = json.loads(v)
        except (ValueError, RecursionError):
            raise click.BadParameter(f"not JSON: {v[:200]}") from None
        for one in (spec if isinstance(spec, list) else [spec]):
            try:
                out.append(validate(one))
            except FaultError as e:
                raise click.BadParameter(str(e)) from None
    return out


def _symbols(ctx, param, value):
    from .assets import parse_assets
    try:
        return parse_assets(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback only.")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port for every endpoint; 0 picks a free one.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None, metavar="PEM",
              help="Serve wss:// and https:// with this certificate chain (PEM) instead of ws:// and http://.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, metavar="PEM",
              help="The certificate's private key (PEM), when it is not in --tls-cert.")
@click.option("--seed", default=1, show_default=True, type=int, help="Market model seed.")
@click.option("--symbols", default="BTC", show_default=True, callback=_symbols, metavar="LIST",
              help="Comma-separated base assets served: <A>USDT on Binance, KRW-<A> on Upbit (KRW-USDT always), "
                   "coin <A> on Coinglass.")
@click.option("--ports-file", type=click.Path(dir_okay=False), default=None,
              help="Write the endpoint URLs here (JSON, atomically) once listening.")
@click.option("--start", "start_ms", type=TIME, default=None, metavar="T",
              help="Model clock origin (ISO-8601, UTC when no zone, or epoch ms); default: now. "
                   "Seed + start reproduce every message byte for byte.")
@click.option("--history", "history_s", default=3600, show_default=True, type=click.IntRange(0),
              help="Seconds of market before the start that REST serves (backfill, look-backs).")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve a capture (JSON Lines, optionally .gz) instead of the model.")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Model (or replay) seconds per wall second; 0 = replay as fast as possible.")
@click.option("--flood", default=0, show_default=True, type=click.IntRange(0),
              help="Benchmark mode: Binance aggTrade at up to N msg/s to each /market client, "
                   "spread over the --symbols (N / symbols per aggTrade stream).")
@click.option("--paused", is_flag=True, help="Start with the model/replay clock paused "
                                             "(POST /_sim/clock {\"action\":\"resume\"}).")
@click.option("--fault", "faults", multiple=True, callback=_faults, metavar="JSON",
              help="A fault to apply once listening (repeatable); \"at\": seconds delays it.")
@click.option("--retain", "retain_s", default=None, type=click.IntRange(60),
              help="Seconds of trades REST backfill serves  [default: history + 7200]")
@click.option("--usdt-krw", default=1415.0, show_default=True, type=click.FloatRange(1000, 2000),
              help="Centre of the KRW-USDT rate.")
@click.option("--binance-ping-interval", default=180.0, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between server pings (real: 180).")
@click.option("--binance-pong-timeout", default=600.0, show_default=True, type=click.FloatRange(0.05),
              help="Disconnect when a ping is unanswered this long (real: 600).")
@click.option("--binance-lifetime", default=86400.0, show_default=True, type=click.FloatRange(0.1),
              help="Cut every Binance connection after this many seconds (real: 24 h).")
@click.option("--binance-weight-limit", default=2400, show_default=True, type=click.IntRange(1),
              help="REST request weight per minute before 429.")
@click.option("--binance-agg-history-s", default=0, show_default=True, type=click.IntRange(0),
              help="Refuse aggTrades older than this many seconds with 400/-1130 (real: 48 h; 0 = no limit).")
@click.option("--binance-futures-data-days", default=0, show_default=True, type=click.IntRange(0),
              help="Refuse /futures/data startTime older than N days with 400/-1130 (real: ~30; 0 = clamp).")
@click.option("--binance-futures-data-window", default="oldest", show_default=True,
              type=click.Choice(["oldest", "newest"]),
              help="Which rows a /futures/data window larger than limit returns.")
@click.option("--binance-restricted-location", is_flag=True,
              help="Answer every Binance request and WebSocket handshake with HTTP 451 (restricted location).")
@click.option("--binance-ban-seconds", default=120.0, show_default=True, type=click.FloatRange(0.1),
              help="First 418 ban for a client that keeps going after 429s (doubles each time).")
@click.option("--upbit-idle-timeout", default=120.0, show_default=True, type=click.FloatRange(0.1),
              help="Close an Upbit connection with no traffic either way for this long.")
@click.option("--upbit-origin-interval", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Requests carrying an Origin header: at most one per this many seconds.")
@click.option("--coinglass-key", default=None, metavar="KEY",
              help="Require this CG-API-KEY (default: any non-empty key not in a small rejected set).")
@click.option("--coinglass-limit", default=30, show_default=True, type=click.IntRange(1),
              help="Coinglass requests per minute before 429 (Hobbyist: 30).")
@click.option("--coinglass-plan", default="standard", show_default=True,
              type=click.Choice(["hobbyist", "startup", "standard", "professional"]),
              help="Plan whose interval restrictions apply.")
@click.option("--coinglass-errors", default="legacy", show_default=True, type=click.Choice(["legacy", "real"]),
              help="Error shapes: legacy (HTTP 401 naming the interval) or real (plan refusal HTTP 200 "
                   "code 401 'Upgrade plan', bad key HTTP 400 'Invalid API key provided').")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def main(host, port, tls_cert, tls_key, seed, symbols, ports_file, start_ms, history_s, replay, speed, flood, paused,
         faults, retain_s,
         usdt_krw, binance_ping_interval, binance_pong_timeout, binance_lifetime, binance_weight_limit,
         binance_agg_history_s, binance_futures_data_days, binance_futures_data_window,
         binance_restricted_location, binance_ban_seconds, upbit_idle_timeout, upbit_origin_interval, coinglass_key,
         coinglass_limit, coinglass_plan, coinglass_errors, log_level):
    """Serve Upbit, Binance USD-M futures and Coinglass on one loopback port, from a
    deterministic market model (or a capture), with fault injection."""
    if not _loopback(host):
        raise click.UsageError(f"--host must be a loopback address, not {host!r}")
    if tls_key and not tls_cert:
        raise click.UsageError("--tls-key needs --tls-cert")
    if speed <= 0 and not replay:
        raise click.UsageError("--speed 0 only makes sense with --replay")
    _setup_logging(log_level)
    from .server import SimConfig
    cfg = SimConfig(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, seed=seed, symbols=symbols,
                    start_ms=start_ms, history_s=history_s,
                    speed=speed, replay=replay, flood=flood, paused=paused, retain_s=retain_s, usdt_krw=usdt_krw,
                    ports_file=ports_file, binance_ping_interval=binance_ping_interval,
                    binance_pong_timeout=binance_pong_timeout, binance_lifetime=binance_lifetime,
                    binance_weight_limit=binance_weight_limit, binance_agg_history_s=binance_agg_history_s,
                    binance_futures_data_days=binance_futures_data_days,
                    binance_futures_data_window=binance_futures_data_window, binance_ban_seconds=binance_ban_seconds,
                    binance_restricted_location=binance_restricted_location,
                    upbit_idle_timeout=upbit_idle_timeout, upbit_origin_interval=upbit_origin_interval,
                    coinglass_key=coinglass_key, coinglass_limit=coinglass_limit, coinglass_plan=coinglass_plan,
                    coinglass_errors=coinglass_errors, faults=list(faults))
    try:
        code = asyncio.run(_serve(cfg))
    except KeyboardInterrupt:
        code = exitcodes.OK
    sys.exit(code)


async def _serve(cfg) -> int:
    from .replay import CaptureError
    from .server import Sim
    try:
        sim = Sim(cfg)
    except (CaptureError, OSError) as e:
        log.error("cannot start: %s", e)
        return exitcodes.CONFIG if isinstance(e, CaptureError) else exitcodes.IOERR
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.start()
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", cfg.host, cfg.port, e)
        return exitcodes.IOERR
    await stop.wait()
    log.info("stopping (signal)")
    try:
        await asyncio.wait_for(sim.stop(), 4.0)
    except asyncio.TimeoutError:
        log.warning("stop took too long; exiting anyway")
    return exitcodes.OK


if __name__ == "__main__":
    main()
