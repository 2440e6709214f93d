"""``crypton audit``: the Kappa check.

Reads both inbox topics from the beginning and replays them through the pure
core: every keyed machine's input is exactly its inbox partition restricted to
its key, so the replay reproduces what the dataflow must have done. It then
checks, and exits non-zero on any discrepancy, that:

* the state topics (orders, balances, trades, transfers, depth) folded to
  their latest versions equal what the replay emits;
* what each machine sent the other is in the other's inbox, byte for byte,
  and nothing else is (duplicates from at-least-once writes are fine when
  identical); each link (origin to destination) is one chain, every message's
  ``prev`` naming the one before it on that link (0 only where the sender had
  forgotten the destination, after a window without writing to it);
* every book applied each distinct message it received exactly once: none
  dropped as stale that had not been applied before (``Inbound.stale`` counts
  repeats and losses alike; this tells them apart);
* trade sequences are contiguous per market with no duplicate in effect;
* funds are conserved per asset (all balances, fee account included, equal
  accepted credits minus accepted debits), none is negative, every held
  amount is backed by an open order, and no book is crossed;
* every order and transfer command is answered: by its record, or by a
  ``stale`` rejection. A wallet drops a command silently only as a repeat of
  one it answered, so an unanswered one is a new command whose id shared the
  64-bit digest of a recent one (``crypton.domain.idwindow``: about once in
  2**64 / 12,000 commands of the busiest user).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crypton import schema, signing, topics
from crypton.config import Settings
from crypton.domain import invariants
from crypton.domain.markets import Markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    Credit,
    Debit,
    Message,
    PlaceOrder,
    Settlement,
)
from crypton.domain.wallet import WalletMachine
from crypton.logreader import read_topics
from crypton.views import View

__all__ = ["AuditReport", "audit", "main"]

_MAX_SHOWN = 10
_STATE_TOPICS = (topics.ORDERS, topics.BALANCES, topics.TRADES, topics.TRANSFERS, topics.DEPTH)

LinkKey = tuple[str, str, int]  # (destination key, origin, the origin's output seq)
CommandKey = tuple[str, str]  # ("order", order id) or (user, transfer id)


@dataclass
class AuditReport:
    records: int = 0
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dead_letters: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems

    def check(self, name: str, problems: list[str], summary: str) -> None:
        self.problems.extend(f"{name}: {p}" for p in problems)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        self.lines.append(f"  {name:<12} {summary:<40} {status}")
        for problem in problems[:_MAX_SHOWN]:
            self.lines.append(f"      - {problem}")
        if len(problems) > _MAX_SHOWN:
            self.lines.append(f"      ... and {len(problems) - _MAX_SHOWN} more")


class _Replay:
    """The pure core fed with the inbox topics, partition by partition."""

    def __init__(self, markets: Markets) -> None:
        self.markets = markets
        self.wallets: dict[str, WalletMachine] = {}
        self.books: dict[str, BookMachine] = {}
        self.view = View()
        self.sent: dict[str, dict[LinkKey, bytes]] = {
            topics.WALLET_INBOX: {},
            topics.BOOK_INBOX: {},
        }
        self.prevs: dict[LinkKey, int] = {}  # the ``prev`` of each message sent
        self.failures: list[str] = []
        # The order and transfer commands fed, by ``_command_key``: where first seen.
        self.commands: dict[CommandKey, str] = {}

    def wallet(self, msg: Any) -> list[Message]:
        machine = self.wallets.get(msg.user_id)
        if machine is None:
            machine = self.wallets[msg.user_id] = WalletMachine(msg.user_id, self.markets)
        return machine.handle(msg)

    def book(self, msg: BookOrder | BookCancel) -> list[Message]:
        machine = self.books.get(msg.market)
        if machine is None:
            machine = self.books[msg.market] = BookMachine(self.markets.market(msg.market))
        return machine.handle(msg)

    def feed(self, logical: str, msg: Any, where: str) -> None:
        command = _command_key(msg)
        if command is not None:
            self.commands.setdefault(command, where)
        try:
            out = self.wallet(msg) if logical == topics.WALLET_INBOX else self.book(msg)
        except Exception as exc:  # the dataflow dead-letters these too
            self.failures.append(f"{where}: {type(exc).__name__}: {exc}")
            return
        for item in out:
            if type(item) is Settlement:
                key = (item.user_id, item.src, item.seq)
                self.sent[topics.WALLET_INBOX][key] = schema.WALLET_INBOX.encode(item)
                self.prevs[key] = item.prev
            elif isinstance(item, BookOrder | BookCancel):
                key = (item.market, item.src, item.seq)
                self.sent[topics.BOOK_INBOX][key] = schema.BOOK_INBOX.encode(item)
                self.prevs[key] = item.prev
            else:
                self.view.apply(item)


def _command_key(msg: Any) -> CommandKey | None:
    """How a command's answer is found: ``("order", order_id)`` or ``(user, transfer_id)``."""
    if isinstance(msg, PlaceOrder):
        return ("order", msg.order_id)
    if isinstance(msg, Credit | Debit):
        return (msg.user_id, msg.transfer_id)
    return None


def _unanswered_problems(commands: dict[CommandKey, str], view: View) -> list[str]:
    """Commands with neither a record nor a stale refusal in ``view``: dropped as
    repeats of commands never seen (an id digest collision in a wallet's window).

    >>> from crypton.domain.messages import Rejection
    >>> view = View()
    >>> _unanswered_problems({("u", "t1"): "inbox[0]@9"}, view)
    ["('u', 't1') (inbox[0]@9) has no record and was not refused"]
    >>> _ = view.apply(Rejection(user_id="u", command="credit", ref="t1", reason="stale",
    ...                          reason_code="stale", ts=0))
    >>> _unanswered_problems({("u", "t1"): "inbox[0]@9"}, view)
    []
    """
    orders, transfers = view.orders, view.transfers
    stale = {
        ("order" if r.command == "place_order" else r.user_id, r.ref)
        for r in view.rejections
        if r.reason_code == "stale"
    }
    return [
        f"{key} ({where}) has no record and was not refused"
        for key, where in commands.items()
        if key not in stale
        and (orders.get(key[1]) if key[0] == "order" else transfers.get(key)) is None
    ]


def _chain_problems(prevs: dict[LinkKey, int]) -> list[str]:
    """Each link's messages, in ``seq`` order, must each name the one before as ``prev``
    (or 0: the sender starts a new chain, having forgotten the destination).

    >>> _chain_problems({("u", "M", 3): 0, ("u", "M", 7): 3, ("v", "M", 5): 0})
    []
    >>> _chain_problems({("u", "M", 3): 0, ("u", "M", 7): 4})
    ["('u', 'M', 7): prev 4, but the message before it on the link is 3"]
    """
    problems = []
    last: dict[tuple[str, str], int] = {}
    for key in sorted(prevs, key=lambda k: (k[0], k[1], k[2])):
        link = (key[0], key[1])
        prev, before = prevs[key], last.get(link, 0)
        if prev not in (0, before):
            problems.append(
                f"{key}: prev {prev}, but the message before it on the link is {before}"
            )
        last[link] = key[2]
    return problems


def _applied_problems(books: dict[str, BookMachine], received: Iterable[LinkKey]) -> list[str]:
    """Each book must have applied every distinct message it received exactly once (or
    hold it parked): a message dropped as stale that was not a repeat is lost."""
    distinct = Counter(key[0] for key in set(received))
    problems = []
    for market, machine in sorted(books.items()):
        if machine.seq + machine.inbound.gaps != distinct[market]:
            problems.append(
                f"{market}: {distinct[market]} distinct messages received, {machine.seq} "
                f"applied and {machine.inbound.gaps} waiting ({machine.inbound.stale} stale)"
            )
    return problems


def _compare(name: str, expected: dict[Any, Any], actual: dict[Any, Any]) -> list[str]:
    problems = []
    for key in sorted(expected.keys() | actual.keys(), key=repr):
        want, got = expected.get(key), actual.get(key)
        if want is None:
            problems.append(f"{key} is on the {name} topic but the replay never produced it")
        elif got is None:
            problems.append(f"{key} is missing from the {name} topic")
        elif want != got:
            problems.append(f"{key} differs: log has {got!r}, replay gives {want!r}")
    return problems


def audit(settings: Settings, progress: Any = None) -> AuditReport:
    """Run every check against the cluster of ``settings``."""
    markets = settings.markets()
    report = AuditReport()
    replay = _Replay(markets)
    actual = View()
    received: dict[str, dict[LinkKey, set[bytes]]] = defaultdict(lambda: defaultdict(set))
    trade_copies: Counter[tuple[str, int]] = Counter()
    trades_seen: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    logical_of = {
        topics.topic_name(s.logical, settings.topic_prefix): s.logical for s in topics.TOPICS
    }
    names = [
        topics.topic_name(t, settings.topic_prefix)
        for t in (topics.WALLET_INBOX, topics.BOOK_INBOX, *_STATE_TOPICS, topics.DEAD_LETTERS)
    ]
    signed = signing.required_secret()
    unsigned: list[str] = []
    undecodable: list[str] = []
    for record in read_topics(settings, names):
        report.records += 1
        if progress is not None and report.records % 100_000 == 0:
            progress(f"audit: {report.records} records read")
        logical = logical_of[record.topic]
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        if logical == topics.DEAD_LETTERS:
            report.dead_letters += 1
            continue
        if logical in (topics.WALLET_INBOX, topics.BOOK_INBOX):
            spec = schema.BY_LOGICAL[logical]
            try:
                messages = spec.decode_all(record.value or b"")
            except Exception:
                continue  # undecodable input is the dead-letter topic's business
            batched = len(messages) != 1 or record.key is None
            for index, msg in enumerate(messages):
                here = f"{where}#{index}" if batched else where
                if (
                    signed is not None
                    and isinstance(msg, signing.API_COMMANDS)
                    and not signing.verify(
                        signed, record.topic, record.key or b"", record.value or b"", record.headers
                    )
                ):
                    # Not the API's: the dataflow dead-lettered it, so it is no ground truth.
                    unsigned.append(f"{here}: {type(msg).__name__} without a valid MAC")
                    break
                # What the replay's machine sends is compared, as bytes, with what was
                # received: a batch's message as it is encoded alone.
                value = spec.encode(msg) if batched else record.value or b""
                if type(msg) is Settlement:
                    received[logical][(msg.user_id, msg.src, msg.seq)].add(value)
                elif isinstance(msg, BookOrder | BookCancel):
                    received[logical][(msg.market, msg.src, msg.seq)].add(value)
                replay.feed(logical, msg, here)
            continue
        try:
            state = schema.BY_LOGICAL[logical].decode(record.value or b"")
        except Exception as exc:  # not the dataflow's: reported, and the audit goes on
            undecodable.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        if logical == topics.TRADES:
            trades_seen[(state.market, state.seq)].add(record.value or b"")
            trade_copies[(state.market, state.seq)] += 1
        actual.apply(state)

    report.check("state records", undecodable, f"{len(undecodable)} undecodable state records")
    if signed is not None:
        report.check("signatures", unsigned, f"{len(unsigned)} unsigned commands")
    expected = replay.view
    report.check(
        "orders", _compare("orders", expected.orders, actual.orders), f"{len(actual.orders)} orders"
    )
    report.check(
        "balances",
        _compare("balances", expected.balances, actual.balances),
        f"{len(actual.balances)} accounts",
    )
    trade_problems = _compare("trades", expected.trades, actual.trades)
    trade_problems += [
        f"trade {k} written with different contents"
        for k, v in sorted(trades_seen.items())
        if len(v) > 1
    ]
    trade_problems += invariants.trade_sequence_problems(actual.trades.values())
    duplicates = sum(n - 1 for n in trade_copies.values())
    report.check(
        "trades", trade_problems, f"{len(actual.trades)} trades, {duplicates} duplicate writes"
    )
    report.check(
        "transfers",
        _compare("transfers", expected.transfers, actual.transfers),
        f"{len(actual.transfers)} transfers",
    )
    final_depth = {m: b.depth(len(b.book), 0) for m, b in replay.books.items()}
    depth_problems = []
    for market, depth in sorted(actual.depth.items()):
        want = final_depth.get(market)
        if want is None or (depth.seq, depth.bids, depth.asks) != (
            want.seq,
            want.bids[: len(depth.bids)],
            want.asks[: len(depth.asks)],
        ):
            depth_problems.append(f"{market}: depth at seq {depth.seq} is not the replayed book")
    report.check("depth", depth_problems, f"{len(actual.depth)} markets")

    link_problems: list[str] = []
    for logical, sent in replay.sent.items():
        got = received[logical]
        for key in sorted(sent.keys() | got.keys()):
            copies = got.get(key, set())
            if key not in sent:
                link_problems.append(f"{logical} {key} was never sent by the replayed core")
            elif not copies:
                link_problems.append(f"{logical} {key} was sent but never arrived")
            elif copies != {sent[key]}:
                link_problems.append(f"{logical} {key} arrived with other contents")
    link_problems += _chain_problems(replay.prevs)
    link_problems += replay.failures
    sent_total = sum(len(s) for s in replay.sent.values())
    report.check("inbox loop", link_problems, f"{sent_total} messages between machines")
    applied_problems = _applied_problems(replay.books, received[topics.BOOK_INBOX].keys())
    stale = sum(b.inbound.stale for b in replay.books.values())
    report.check("applied once", applied_problems, f"{stale} stale repeats dropped")
    unanswered = _unanswered_problems(replay.commands, expected)
    report.check("answered", unanswered, f"{len(replay.commands)} order and transfer commands")

    balances = actual.balance_table()
    net = invariants.net_transfers(actual.transfers.values())
    report.check(
        "supply",
        invariants.supply_problems(balances, net),
        ", ".join(f"{a} {v}" for a, v in sorted(net.items())) or "no transfers",
    )
    hold_problems = [p for w in replay.wallets.values() for p in invariants.hold_problems(w)]
    book_problems = [p for b in replay.books.values() for p in invariants.book_problems(b)]
    report.check("holds", hold_problems, f"{len(replay.wallets)} wallets")
    report.check("books", book_problems, f"{len(replay.books)} books uncrossed")
    return report


def main(settings: Settings, argv: Sequence[str] = ()) -> int:
    """Print the audit and return the exit code: 0 clean, 1 discrepancies."""
    parser = argparse.ArgumentParser(
        prog="crypton audit",
        description="Replay the inbox topics through the pure core and check the state "
        "topics and the invariants against it.",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        metavar="S",
        help="while discrepancies remain, read again for up to S seconds: messages still "
        "travelling between the steps look like discrepancies until they land (default 10)",
    )
    args = parser.parse_args(list(argv))
    print(
        f"audit: reading the log at {settings.bootstrap_servers} ...", file=sys.stderr, flush=True
    )
    deadline = time.monotonic() + args.settle
    while True:
        try:
            report = audit(settings, progress=lambda line: print(line, file=sys.stderr))
        except (RuntimeError, TimeoutError) as exc:  # a missing topic, a stalled read
            print(f"crypton: error: audit: {exc}", file=sys.stderr)
            return 2
        if report.clean or time.monotonic() >= deadline:
            break
        time.sleep(1)
    print(f"audit: {report.records} records replayed")
    for line in report.lines:
        print(line)
    if report.dead_letters:
        print(f"  note: {report.dead_letters} dead letter(s) on the dead-letter topic")
    if report.clean:
        print("verdict: CLEAN")
        return 0
    print(f"verdict: {len(report.problems)} DISCREPANCIES")
    return 1
