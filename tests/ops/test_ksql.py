"""The ksqlDB statements in ksql/ against the topics and messages they read.

No ksqlDB server can run here (it is a Java service, on neither PyPI nor Debian),
so these tests parse the statements instead: each source must name a topic of
``crypton.topics.TOPICS`` and declare only fields (with compatible types) of the
message that topic carries, so renaming a field in ``crypton/domain/messages.py``
breaks this test until the statements follow. Derived views must write their own
topics, never read an undeclared source, never use floating point for money, and
convert units with the scales of ``crypton/markets.toml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from crypton import topics
from crypton.config import load_markets
from crypton.domain.messages import (
    BalanceState,
    DeadLetter,
    DepthState,
    OrderState,
    Rejection,
    Trade,
    TransferState,
)
from crypton.users import UserState

KSQL_DIR = Path(__file__).parents[2] / "ksql"
TOPICS_VARIABLE = "${topics}"
TOPIC_BASE = topics.topic_name("")[:-1]  # "crypton": DEFINE topics = 'crypton'
DERIVED_PREFIX = f"{TOPIC_BASE}.ksql."
DECIMAL_SCALE = 8  # the scale of the views' DECIMAL(30, 8)
MAX_EXACT_SCALE = 10**9  # an INTEGER divisor: DECIMAL(19, 0) / INT keeps 11 decimals

# The message each topic carries (its value's JSON shape).
MESSAGE_OF_TOPIC: dict[str, type[msgspec.Struct]] = {
    topics.TRADES: Trade,
    topics.ORDERS: OrderState,
    topics.BALANCES: BalanceState,
    topics.DEPTH: DepthState,
    topics.TRANSFERS: TransferState,
    topics.REJECTIONS: Rejection,
    topics.DEAD_LETTERS: DeadLetter,
    topics.USERS: UserState,
}

_CREATE_SOURCE = re.compile(
    r"CREATE\s+(?P<kind>STREAM|TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>\w+)\s*"
    r"\((?P<columns>.*)\)\s*WITH\s*\((?P<props>[^()]*)\)$",
    re.IGNORECASE | re.DOTALL,
)
_CREATE_AS = re.compile(
    r"CREATE\s+(?P<kind>STREAM|TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>\w+)\s*"
    r"WITH\s*\((?P<props>[^()]*)\)\s*AS\s+SELECT\s+(?P<query>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_INSERT = re.compile(r"INSERT\s+INTO\s+(?P<name>\w+)\s+SELECT\s+(?P<query>.*)$", re.I | re.S)
_SET = re.compile(r"SET\s+'[\w.]+'\s*=\s*'[^']*'$", re.IGNORECASE)
_PROPERTY = re.compile(r"(\w+)\s*=\s*'([^']*)'")
_FROM = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)
_CASE_MARKET = re.compile(r"CASE\s+market\s+((?:WHEN\s+'[^']+'\s+THEN\s+\d+\s+)+)END", re.I)
_WHEN = re.compile(r"WHEN\s+'([^']+)'\s+THEN\s+(\d+)", re.IGNORECASE)


# --- a small reader of ksqlDB statements ----------------------------------------------


def split_statements(text: str) -> list[str]:
    """Statements of a script: ``--`` comments dropped, split at ``;`` outside quotes."""
    statements, current, quote = [], [], ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            current.append(c)
            if c == quote:
                quote = ""
        elif c in "'`":
            quote = c
            current.append(c)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        elif c == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(c)
        i += 1
    assert not quote, "unterminated quote"
    assert not "".join(current).strip(), f"statement without ';': {''.join(current)[:60]!r}"
    return [s for s in statements if s]


def split_top_level(text: str) -> list[str]:
    """Split at commas outside ``<>`` and ``()``: ``MAP<STRING, ARRAY<BIGINT>>`` stays whole."""
    parts, current, depth = [], [], 0
    for c in text:
        if c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(c)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def column_name(raw: str) -> str:
    """ksqlDB matches JSON fields case-insensitively for unquoted names, exactly for quoted."""
    return raw[1:-1] if raw.startswith("`") else raw.lower()


@dataclass
class Column:
    name: str
    sql_type: str
    key: bool


@dataclass
class Source:
    kind: str
    name: str
    topic: str
    props: dict[str, str]
    columns: list[Column] = field(default_factory=list)


@dataclass
class Script:
    sources: dict[str, Source] = field(default_factory=dict)
    derived: dict[str, Source] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    """The SELECT part of every CREATE ... AS SELECT and INSERT INTO."""
    statements: list[str] = field(default_factory=list)


def _props(raw: str) -> dict[str, str]:
    return {k.upper(): v for k, v in _PROPERTY.findall(raw)}


def _columns(raw: str) -> list[Column]:
    out = []
    for part in split_top_level(raw):
        match = re.fullmatch(r"(`[^`]+`|\w+)\s+(.+?)(\s+PRIMARY\s+KEY|\s+KEY)?", part, re.I | re.S)
        assert match, f"cannot read column definition {part!r}"
        out.append(Column(column_name(match[1]), match[2].strip().upper(), bool(match[3])))
    return out


def read_scripts(texts: list[str]) -> Script:
    """Every statement of ``texts`` (in order), checking each names only what came before."""
    script = Script()
    for text in texts:
        for statement in split_statements(text):
            script.statements.append(statement)
            known = {**script.sources, **script.derived}
            if m := _CREATE_SOURCE.match(statement):
                props = _props(m["props"])
                name = m["name"].lower()
                assert name not in known, f"{name} declared twice"
                source = Source(m["kind"].upper(), name, props.get("KAFKA_TOPIC", ""), props)
                source.columns = _columns(m["columns"])
                script.sources[name] = source
            elif m := _CREATE_AS.match(statement):
                props = _props(m["props"])
                name = m["name"].lower()
                assert name not in known, f"{name} declared twice"
                script.derived[name] = Source(
                    m["kind"].upper(), name, props.get("KAFKA_TOPIC", ""), props
                )
                script.queries.append(m["query"])
            elif m := _INSERT.match(statement):
                assert m["name"].lower() in script.derived, f"INSERT INTO unknown {m['name']}"
                script.queries.append(m["query"])
            elif not _SET.match(statement):
                raise AssertionError(f"unexpected statement: {statement[:80]!r}")
    return script


# --- what a SQL type may hold ------------------------------------------------------------


def _compatible(sql_type: str, info: Any) -> bool:
    """Whether a ksqlDB column of ``sql_type`` reads a JSON value of msgspec type ``info``."""
    mi = msgspec.inspect
    if isinstance(info, mi.UnionType):  # Optional[X]: ksqlDB columns are nullable
        kinds = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return len(kinds) == 1 and _compatible(sql_type, kinds[0])
    sql_type = sql_type.replace(" ", "")
    if m := re.fullmatch(r"MAP<STRING,(.+)>", sql_type):
        return isinstance(info, mi.DictType) and _compatible(m[1], info.value_type)
    if m := re.fullmatch(r"ARRAY<(.+)>", sql_type):
        if isinstance(info, mi.ListType | mi.VarTupleType):
            return _compatible(m[1], info.item_type)
        if isinstance(info, mi.StructType) and info.array_like:
            return all(_compatible(m[1], f.type) for f in info.fields)
        return False
    if sql_type in ("BIGINT", "INTEGER", "INT"):
        return isinstance(info, mi.IntType)
    if sql_type in ("STRING", "VARCHAR"):
        if isinstance(info, mi.LiteralType):
            return all(isinstance(v, str) for v in info.values)
        return isinstance(info, mi.StrType)
    if sql_type == "BOOLEAN":
        return isinstance(info, mi.BoolType)
    return False


def check_script(script: Script) -> list[str]:
    """Everything wrong with ``script``: an empty list when it agrees with the code."""
    errors: list[str] = []
    exchange_topics = {spec.name(): spec for spec in topics.TOPICS}
    for source in script.sources.values():
        topic = source.topic.replace(TOPICS_VARIABLE, TOPIC_BASE)
        spec = exchange_topics.get(topic)
        if spec is None:
            errors.append(f"{source.name}: topic {source.topic!r} is not in crypton.topics.TOPICS")
            continue
        if source.props.get("VALUE_FORMAT", "").upper() != "JSON":
            errors.append(f"{source.name}: VALUE_FORMAT must be 'JSON'")
        message = MESSAGE_OF_TOPIC[spec.logical]
        fields = {f.encode_name: f.type for f in msgspec.inspect.type_info(message).fields}
        for column in source.columns:
            if column.name not in fields:
                errors.append(f"{source.name}.{column.name}: no such field in {message.__name__}")
            elif not _compatible(column.sql_type, fields[column.name]):
                errors.append(
                    f"{source.name}.{column.name} {column.sql_type} cannot hold"
                    f" {message.__name__}.{column.name} ({fields[column.name]})"
                )
        keys = [c for c in source.columns if c.key]
        if source.kind == "TABLE" and not keys:
            errors.append(f"{source.name}: a table needs its PRIMARY KEY, the topic's key")
        if keys:
            if [c.name for c in keys] != [spec.key]:
                errors.append(f"{source.name}: key column must be {spec.key!r}, the topic's key")
            if source.props.get("KEY_FORMAT", "").upper() != "KAFKA":
                errors.append(f"{source.name}: the topic's keys are strings: KEY_FORMAT='KAFKA'")
        if source.kind == "TABLE" and not spec.compacted:
            errors.append(f"{source.name}: a table over the uncompacted {topic}")
        ts = source.props.get("TIMESTAMP")
        if ts and column_name(ts) not in {c.name for c in source.columns}:
            errors.append(f"{source.name}: TIMESTAMP {ts!r} is not a column")
    for view in script.derived.values():
        topic = view.topic.replace(TOPICS_VARIABLE, TOPIC_BASE)
        if not topic.startswith(DERIVED_PREFIX) or topic in exchange_topics:
            errors.append(f"{view.name}: must write its own topic under {DERIVED_PREFIX!r}")
    declared = {**script.sources, **script.derived}
    for query in script.queries:
        for name in _FROM.findall(query):
            if name.lower() not in declared:
                errors.append(f"query reads undeclared {name}: {query[:60]!r}")
    for statement in script.statements:
        if re.search(r"\b(DOUBLE|FLOAT|REAL)\b", statement, re.IGNORECASE):
            errors.append(f"floating point in {statement[:60]!r}: money is DECIMAL")
    return errors


def check_scales(script: Script) -> list[str]:
    """Every ``CASE market WHEN ... THEN scale`` maps each market to its base or quote scale."""
    markets = {m.symbol: m for m in load_markets()}
    errors = []
    cases = [dict(_WHEN.findall(m[1])) for q in script.queries for m in _CASE_MARKET.finditer(q)]
    if not cases:
        errors.append("no CASE market ... END scale expressions found")
    for case in cases:
        got = {market: int(scale) for market, scale in case.items()}
        base = {s: m.base.scale for s, m in markets.items()}
        quote = {s: m.quote.scale for s, m in markets.items()}
        if got not in (base, quote):
            errors.append(f"scales {got} are neither the base {base} nor the quote {quote}")
    for asset in {a for m in markets.values() for a in (m.base, m.quote)}:
        if asset.scale > 10**DECIMAL_SCALE or asset.scale > MAX_EXACT_SCALE:
            errors.append(f"{asset.code}: precision {asset.precision} does not fit DECIMAL(30, 8)")
    return errors


# --- the tests ---------------------------------------------------------------------------


def _files() -> list[Path]:
    return sorted(KSQL_DIR.glob("*.sql"))


def _texts() -> list[str]:
    return [p.read_text("utf-8") for p in _files()]


def test_statement_files_exist_and_split() -> None:
    assert [p.name for p in _files()] == ["10_sources.sql", "20_views.sql"]
    for path in _files():
        statements = split_statements(path.read_text("utf-8"))
        assert statements, path
        assert all(s.endswith(("'", ")", "CHANGES")) for s in statements), path


def test_sources_cover_trades_orders_and_balances() -> None:
    script = read_scripts(_texts())
    by_topic = {s.topic: s for s in script.sources.values()}
    assert by_topic["${topics}.trades"].kind == "STREAM"
    assert by_topic["${topics}.orders"].kind == "TABLE"
    assert by_topic["${topics}.balances"].kind == "TABLE"
    assert {"crypton_ohlcv_1m", "crypton_user_volume_1d", "crypton_open_orders_by_market"} <= set(
        script.derived
    )


def test_statements_agree_with_topics_and_messages() -> None:
    assert check_script(read_scripts(_texts())) == []


def test_unit_scales_match_markets_toml() -> None:
    assert check_scales(read_scripts(_texts())) == []


def test_the_window_time_is_the_trades_own_time() -> None:
    trades = read_scripts(_texts()).sources["crypton_trades"]
    assert column_name(trades.props["TIMESTAMP"]) == "time"


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("taker_fee BIGINT", "taker_fees BIGINT", "taker_fees: no such field in Trade"),
        ("post_only BOOLEAN", "post_only STRING", "post_only STRING cannot hold"),
        ("'${topics}.balances'", "'${topics}.balance'", "is not in crypton.topics.TOPICS"),
        ("order_id STRING PRIMARY KEY", "order_id STRING", "a table needs its PRIMARY KEY"),
        ("user_id STRING PRIMARY KEY", "ts STRING PRIMARY KEY", "key column must be 'user_id'"),
        ("'${topics}.ksql.ohlcv_1m'", "'${topics}.trades'", "must write its own topic"),
        ("FROM crypton_trade_sides", "FROM crypton_fills", "reads undeclared crypton_fills"),
        ("AS DECIMAL(30, 8)) AS price", "AS DOUBLE) AS price", "floating point"),
    ],
)
def test_the_checks_catch_a_mismatch(old: str, new: str, error: str) -> None:
    texts = _texts()
    assert any(old in t for t in texts), old
    broken = [t.replace(old, new) for t in texts]
    errors = check_script(read_scripts(broken))
    assert any(error in e for e in errors), errors


def test_a_renamed_message_field_breaks_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    class RenamedTrade(msgspec.Struct, tag="trade", tag_field="msg", kw_only=True):
        market: str
        seq: int
        px: int  # was: price

    monkeypatch.setitem(MESSAGE_OF_TOPIC, topics.TRADES, RenamedTrade)
    errors = check_script(read_scripts(_texts()))
    assert any("crypton_trades.price: no such field in RenamedTrade" in e for e in errors)


def test_a_changed_precision_breaks_the_scale_check() -> None:
    texts = [t.replace("THEN 1000000\n", "THEN 100000\n") for t in _texts()]
    assert any("neither the base" in e for e in check_scales(read_scripts(texts)))
