-- Crypton: derived views over the sources of 10_sources.sql (run that first).
--
-- Money never becomes a DOUBLE. Aggregates are taken on the exact BIGINTs of the
-- log and only then turned into decimals: CAST(x AS DECIMAL(19, 0)) divided by the
-- asset's scale (10^precision, an INTEGER), then CAST to DECIMAL(30, 8). DECIMAL
-- division keeps scale max(6, 0 + 10 + 1) = 11 here, so dividing by a power of ten
-- of at most 10^9 is exact; 8 decimals hold every asset of crypton/markets.toml
-- (tests/ops/test_ksql.py checks both, and that the scales below match that file).
--
-- Every view writes its own topic under '${topics}.ksql.': ksqlDB never writes to
-- a topic of the exchange.

-- Trades with the scales of their market's base and quote assets, from
-- crypton/markets.toml. A market missing here gets NULL scales, hence NULL decimals:
-- add it when you add a market (the test fails until you do).
CREATE STREAM IF NOT EXISTS crypton_trades_scaled WITH (
    KAFKA_TOPIC = '${topics}.ksql.trades_scaled',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    market,
    seq,
    price,
    quantity,
    notional,
    taker_side,
    maker_user_id,
    taker_user_id,
    maker_fee,
    taker_fee,
    `time`,
    CASE market
        WHEN 'BTC-USDT' THEN 100000000
        WHEN 'ETH-USDT' THEN 100000000
        WHEN 'ETH-BTC' THEN 100000000
    END AS base_scale,
    CASE market
        WHEN 'BTC-USDT' THEN 1000000
        WHEN 'ETH-USDT' THEN 1000000
        WHEN 'ETH-BTC' THEN 100000000
    END AS quote_scale
FROM crypton_trades
EMIT CHANGES;

-- Trades as decimals, for ad-hoc queries and downstream consumers.
CREATE STREAM IF NOT EXISTS crypton_trades_decimal WITH (
    KAFKA_TOPIC = '${topics}.ksql.trades_decimal',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    market,
    seq,
    CAST(CAST(price AS DECIMAL(19, 0)) / quote_scale AS DECIMAL(30, 8)) AS price,
    CAST(CAST(quantity AS DECIMAL(19, 0)) / base_scale AS DECIMAL(30, 8)) AS quantity,
    CAST(CAST(notional AS DECIMAL(19, 0)) / quote_scale AS DECIMAL(30, 8)) AS notional,
    taker_side,
    `time`
FROM crypton_trades_scaled
EMIT CHANGES;

-- One-minute OHLCV candles per market, windowed on the trade's own time. Within a
-- market the topic's order is the book's trade sequence (one key, one partition),
-- so EARLIEST/LATEST_BY_OFFSET are the first and last trades of the minute.
CREATE TABLE IF NOT EXISTS crypton_ohlcv_1m WITH (
    KAFKA_TOPIC = '${topics}.ksql.ohlcv_1m',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    market,
    WINDOWSTART AS start_ms,
    CAST(CAST(EARLIEST_BY_OFFSET(price) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS open_price,
    CAST(CAST(MAX(price) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS high_price,
    CAST(CAST(MIN(price) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS low_price,
    CAST(CAST(LATEST_BY_OFFSET(price) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS close_price,
    CAST(CAST(SUM(quantity) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(base_scale)
        AS DECIMAL(30, 8)) AS volume,
    CAST(CAST(SUM(notional) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS quote_volume,
    COUNT(*) AS trades
FROM crypton_trades_scaled
WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 30 SECONDS)
GROUP BY market
EMIT CHANGES;

-- Each trade twice, once per side: the maker's fill and the taker's fill.
CREATE STREAM IF NOT EXISTS crypton_trade_sides WITH (
    KAFKA_TOPIC = '${topics}.ksql.trade_sides',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    market,
    maker_user_id AS user_id,
    'maker' AS liquidity,
    quantity,
    notional,
    maker_fee AS fee,
    base_scale,
    quote_scale
FROM crypton_trades_scaled
EMIT CHANGES;

INSERT INTO crypton_trade_sides
SELECT
    market,
    taker_user_id AS user_id,
    'taker' AS liquidity,
    quantity,
    notional,
    taker_fee AS fee,
    base_scale,
    quote_scale
FROM crypton_trades_scaled
EMIT CHANGES;

-- Traded volume per user, market and UTC day (tumbling windows start at the epoch,
-- so a one-day window is a UTC calendar day). Fees are in the quote asset.
CREATE TABLE IF NOT EXISTS crypton_user_volume_1d WITH (
    KAFKA_TOPIC = '${topics}.ksql.user_volume_1d',
    KEY_FORMAT = 'JSON',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    user_id,
    market,
    WINDOWSTART AS day_start_ms,
    CAST(CAST(SUM(quantity) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(base_scale)
        AS DECIMAL(30, 8)) AS base_volume,
    CAST(CAST(SUM(notional) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS quote_volume,
    CAST(CAST(SUM(fee) AS DECIMAL(19, 0)) / LATEST_BY_OFFSET(quote_scale)
        AS DECIMAL(30, 8)) AS fees,
    COUNT(*) AS fills
FROM crypton_trade_sides
WINDOW TUMBLING (SIZE 1 DAY, GRACE PERIOD 1 HOUR)
GROUP BY user_id, market
EMIT CHANGES;

-- Live orders per market: accepted (NEW), resting (OPEN) or partly filled. An
-- order leaving these statuses is subtracted again, because the source is a table.
CREATE TABLE IF NOT EXISTS crypton_open_orders_by_market WITH (
    KAFKA_TOPIC = '${topics}.ksql.open_orders_by_market',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    market,
    COUNT(*) AS open_orders,
    SUM(CASE WHEN side = 'buy' THEN 1 ELSE 0 END) AS open_bids,
    SUM(CASE WHEN side = 'sell' THEN 1 ELSE 0 END) AS open_asks
FROM crypton_orders
WHERE status IN ('NEW', 'OPEN', 'PARTIALLY_FILLED')
GROUP BY market
EMIT CHANGES;

-- Dead letters per source topic and hour: anything here deserves a look.
CREATE TABLE IF NOT EXISTS crypton_dead_letters_1h WITH (
    KAFKA_TOPIC = '${topics}.ksql.dead_letters_1h',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
) AS SELECT
    topic,
    WINDOWSTART AS start_ms,
    COUNT(*) AS dead_letters,
    LATEST_BY_OFFSET(reason) AS last_reason
FROM crypton_dead_letters
WINDOW TUMBLING (SIZE 1 HOUR)
GROUP BY topic
EMIT CHANGES;
