-- Many symbols: the assets an export file holds, as comma-separated base assets in the
-- file's order ('BTC', 'BTC,ETH'); retention deletes an asset's raw rows only where an
-- export holding that asset covers them. Every export recorded before this version was
-- written by the single-symbol cqt: BTC alone.
ALTER TABLE export_runs ADD COLUMN symbols TEXT;
UPDATE export_runs SET symbols = 'BTC';
