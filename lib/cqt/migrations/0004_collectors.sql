-- Collectors (issue #4): why a gap happened, so an operator can tell a stall from a
-- planned rollover or a restart without reading logs.
--   id_jump   ids skipped while connected        reconnect  after a close or error
--   stall     after the stall watchdog fired      rollover   planned reconnect before the 24 h cut
--   shutdown  after a Binance serverShutdown      restart    first data after a process start
--   initial   first-start backfill of CQT_BACKFILL_S seconds
ALTER TABLE gaps ADD COLUMN reason TEXT;
CREATE INDEX gaps_source_stream ON gaps (source, stream, status);
