"""The ids of a user's recent commands, in bounded memory and a small snapshot.

A wallet drops a command whose id it has seen (a repeat, written twice to the
log) and refuses one older than everything it may have forgotten (stale). The
ids it remembers are an ``IdWindow``: the two generations of
``crypton.domain.sequencing.Recent`` (an id kept for one to two
``DEDUPE_WINDOW_MS`` of the user's clock; that module's proof says why nothing
is applied twice), holding a 64-bit digest of each id instead of the id.

Why a digest. A market maker placing 10 orders a second keeps 6,000 to 12,000
order ids, and its wallet is packed again at every epoch it trades in (2 s):
as msgpack strings, 38 bytes an id, 0.46 MB; as digests, 8 bytes an id in one
``bytes`` blob per generation, about 0.1 MB.

What a digest costs. ``id_digest`` is xxHash's XXH3, 64 bits, of the id's
UTF-8 bytes: a well-mixed hash, so any two distinct ids share a digest with
probability about 2**-64. A new command whose id shares the digest of one in the
window is taken for a repeat and dropped, like a repeat, with no record: about
n * 2**-64 per command with n ids in the window, 6.5e-16 at n = 12,000 (one such
loss in five million years of a market maker's 10 orders a second); the chance
that any two ids of a full window collide is about n**2 / 2**65, 4e-12. The
wallet cannot tell that case from a repeat (it no longer has the id), so it stays
silent; ``crypton audit`` names it ("answered": a command with neither a record
nor a refusal). The digest is not cryptographic: whoever picks the ids could make
two collide. Order ids are keyed HMACs, which a user cannot aim; transfer ids
come from the operator's admin API. Either way a collision only refuses a
command, never applies one twice. XXH3 costs a sixth of what the first digest
did (the id as one integer modulo a 64-bit prime: 237 ns against 39 ns a call,
and a twelfth of the compiled core's instructions per order); BLAKE2b cost 2.5
times that one.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any, Final

from xxhash import xxh3_64_intdigest

from crypton.domain.sequencing import DEDUPE_WINDOW_MS

__all__ = ["IdWindow", "id_digest"]

_xxh3: Final = xxh3_64_intdigest
"""A C static, compiled (``make mypyc``): an imported name is looked up at each use."""

_DIGESTS: Final = "L" if array("L").itemsize == 8 else "Q"
"""The ``array`` type code of 8-byte unsigned integers: ``L`` (unsigned long) where that is
8 bytes, as on 64-bit Linux and macOS. Appending to an ``L`` array converts the digest
with a loop over its three digits; a ``Q`` array converts it through
``_PyLong_AsByteArray``, 360 instructions a command more (``loadtest.core_instructions``).
The bytes are the same either way."""


def id_digest(key: str) -> int:
    """The 64-bit digest ``IdWindow`` keeps of a command id: XXH3 of its UTF-8 bytes.
    Stable across processes, runs and machines (unlike ``hash``), and cheap: the
    wallet computes it once per order.

    >>> id_digest("a") == id_digest("a") != id_digest("b"), id_digest("b" * 8) < 2**64
    (True, True)
    """
    return _xxh3(key.encode())


class IdWindow:
    """The recent command ids of one user, kept as 64-bit digests (``id_digest``) for
    between one and two ``span`` of message time: a set form of ``Recent``.

    The same two generations, swapped by the same rule (``tick``), with the same
    ``horizon``; an id is only ever added, never moved (a repeat is dropped before it
    could be), so it is kept at least ``span`` after it was added and the proof in
    ``crypton.domain.sequencing`` holds unchanged. What differs is the encoding: a
    generation is a set of ints in memory and, in a snapshot, one ``bytes`` blob of 8
    bytes an id in the order they were added. The previous generation only changes at
    a swap, so its blob is packed once then; the current one is an ``array`` of 8-byte
    integers appended to as ids come, so its blob is a copy of the array's memory. (It
    was a list, a few tens of nanoseconds cheaper an id to append to, whose packing at
    a snapshot read every digest back from memory: 41 ms an epoch's first snapshot for
    1,000 wallets holding 160,000 ids in all, ``loadtest.bench_core``'s users.)

    A digest stands for its id up to a collision: see the module's docstring.

    >>> seen = IdWindow(span=10)
    >>> _ = seen.tick(0); seen.add("a"); _ = seen.tick(10); seen.add("b")
    >>> "a" in seen, "b" in seen, len(seen), seen.horizon
    (True, True, 2, 0)
    >>> seen.tick(20)  # "a" was added in the generation begun at 0: forgotten
    True
    >>> "a" in seen, "b" in seen, seen.horizon
    (False, True, 10)
    >>> IdWindow.restore(seen.snapshot(), span=10).snapshot() == seen.snapshot()
    True
    >>> len(seen.snapshot()[3])  # the previous generation: one id, 8 bytes
    8
    """

    __slots__ = ("added", "current", "horizon", "packed", "previous", "since", "span")

    def __init__(self, span: int = DEDUPE_WINDOW_MS, since: int = 0, horizon: int = 0) -> None:
        self.span = span
        self.since = since  # the clock when the current generation began
        self.horizon = horizon  # every id dropped so far was added before this
        self.current: set[int] = set()
        self.previous: set[int] = set()
        self.added = array(_DIGESTS)  # the current generation's digests, in order
        self.packed = b""  # the previous generation's blob

    def tick(self, clock: int) -> bool:
        """Swap generations if the current one is ``span`` old at ``clock``; say if it did."""
        if clock - self.since < self.span:
            return False
        if self.previous:
            self.horizon = self.since  # as in ``Recent.tick``
        self.previous = self.current
        self.packed = _blob(self.added)
        self.current = set()
        self.added = array(_DIGESTS)
        self.since = clock
        return True

    def has(self, digest: int) -> bool:
        """Whether an id of this ``id_digest`` was added and not yet forgotten."""
        return digest in self.current or digest in self.previous

    def put(self, digest: int) -> None:
        """Remember an id by its ``id_digest``: the caller checked ``has`` first."""
        self.current.add(digest)
        self.added.append(digest)

    def add(self, key: str) -> None:
        """Remember ``key`` if it is not remembered yet."""
        digest = id_digest(key)
        if not self.has(digest):
            self.put(digest)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(id_digest(key))

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def snapshot(self) -> tuple[int, int, bytes, bytes]:
        """``(since, horizon, current, previous)``, a generation as 8 bytes an id."""
        return self.since, self.horizon, _blob(self.added), self.packed

    @classmethod
    def restore(cls, snapshot: Any, span: int = DEDUPE_WINDOW_MS) -> IdWindow:
        """The window of a ``snapshot``. A generation may also be a sequence of ids (the
        format before digests), so a recovery store written before them still resumes.

        >>> IdWindow.restore((0, 0, ("b",), ("a",))).snapshot() == (
        ...     0, 0, id_digest("b").to_bytes(8, "little"), id_digest("a").to_bytes(8, "little"))
        True
        """
        since, horizon, current, previous = snapshot
        window = cls(span, since, horizon)
        window.added = _array(_packed(current))
        window.current = set(window.added)
        window.packed = _packed(previous)
        window.previous = set(_array(window.packed))
        return window


def _packed(generation: bytes | Sequence[str]) -> bytes:
    """A generation's blob, from a blob or from the ids themselves."""
    if isinstance(generation, bytes | bytearray):
        return bytes(generation)
    return _blob(array(_DIGESTS, [id_digest(key) for key in generation]))


def _array(blob: bytes) -> array[int]:
    """The digests packed in ``blob`` (little-endian, 8 bytes each)."""
    digests = array(_DIGESTS, blob)
    if _SWAP:
        digests.byteswap()
    return digests


def _blob(digests: array[int]) -> bytes:
    """The blob of an array of digests (little-endian, 8 bytes each)."""
    if _SWAP:
        digests = array(_DIGESTS, digests)
        digests.byteswap()
    return digests.tobytes()


_SWAP: Final = sys.byteorder != "little"
assert array(_DIGESTS).itemsize == 8, "IdWindow packs digests as 8-byte unsigned integers"
