-- Crypton: ksqlDB sources over the exchange's topics.
--
-- Run after `DEFINE topics = 'crypton';` (or 'dev.crypton' when the exchange runs
-- with CRYPTON_TOPIC_PREFIX=dev.): every KAFKA_TOPIC below is '${topics}.<name>'.
-- See ksql/README.md.
--
-- Keys are plain UTF-8 strings (KEY_FORMAT 'KAFKA'); values are the JSON of
-- crypton/domain/messages.py. ksqlDB matches JSON fields to unquoted column names
-- case-insensitively, so `price` reads the field "price"; reserved words are quoted
-- in lower case, which matches exactly.
--
-- Partitioning: ksqlDB writes with the Java client's default partitioner, murmur2
-- of the key bytes, which is the partitioner every Crypton producer uses
-- (murmur2_random, crypton/topics.py). A record ksqlDB writes keyed by market or
-- user therefore lands in the partition our dataflow expects for that key.
--
-- Amounts are BIGINT here, exactly as on the log: integers of the asset's smallest
-- unit (prices: quote smallest units per whole base unit). 20_views.sql turns them
-- into DECIMALs; nothing here or there is ever a DOUBLE.

SET 'auto.offset.reset' = 'earliest';

-- Every trade, once, as the book step emitted it (key: market). Windows use the
-- trade's own time, stamped from the command, so a replay lands in the same window.
CREATE STREAM IF NOT EXISTS crypton_trades (
    market STRING KEY,
    seq BIGINT,
    price BIGINT,
    quantity BIGINT,
    notional BIGINT,
    taker_side STRING,
    maker_order_id STRING,
    taker_order_id STRING,
    maker_user_id STRING,
    taker_user_id STRING,
    maker_fee BIGINT,
    taker_fee BIGINT,
    buyer_release BIGINT,
    `time` BIGINT
) WITH (
    KAFKA_TOPIC = '${topics}.trades',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON',
    TIMESTAMP = '`time`'
);

-- The latest state of every order (key: order_id; the topic is compacted). The
-- dataflow writes versions in order per key, so the latest record is the newest state.
CREATE TABLE IF NOT EXISTS crypton_orders (
    order_id STRING PRIMARY KEY,
    user_id STRING,
    client_order_id STRING,
    market STRING,
    side STRING,
    `type` STRING,
    price BIGINT,
    quantity BIGINT,
    funds BIGINT,
    time_in_force STRING,
    post_only BOOLEAN,
    stp STRING,
    status STRING,
    reason STRING,
    filled_quantity BIGINT,
    filled_funds BIGINT,
    fee BIGINT,
    created_at BIGINT,
    updated_at BIGINT,
    version BIGINT
) WITH (
    KAFKA_TOPIC = '${topics}.orders',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
);

-- The latest balances of every user (key: user_id; compacted). `balances` maps an
-- asset to [available, held] (ksqlDB arrays are 1-based: balances['BTC'][1] is
-- the available BTC, in satoshis).
CREATE TABLE IF NOT EXISTS crypton_balances (
    user_id STRING PRIMARY KEY,
    version BIGINT,
    balances MAP<STRING, ARRAY<BIGINT>>,
    ts BIGINT
) WITH (
    KAFKA_TOPIC = '${topics}.balances',
    KEY_FORMAT = 'KAFKA',
    VALUE_FORMAT = 'JSON'
);

-- Input the dataflow could not decode or process, with the reason (operators' view).
CREATE STREAM IF NOT EXISTS crypton_dead_letters (
    topic STRING,
    `partition` INTEGER,
    `offset` BIGINT,
    reason STRING
) WITH (
    KAFKA_TOPIC = '${topics}.deadletters',
    VALUE_FORMAT = 'JSON'
);
