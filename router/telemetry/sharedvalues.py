"""Metric values a router's worker processes share: each process writes its own, any reads all.

A router run with `--workers N` is N processes behind one port, and a scrape reaches one of
them. For that one to answer for all, every process keeps its values in files of doubles
(memory-mapped, so an increment is one store into the page cache and nothing is sent or
locked) and an index saying which slots hold what. A scrape reads every process's files and
the metrics add them up (`router.telemetry.plainmetrics`). The files of a process that died
stay until the router stops, so its counts are still in the sum when the parent starts a
worker in its place: counters never go backwards.

prometheus-client's multiprocess mode keeps the same kind of files, but takes a lock and packs
a struct on every increment, which the router's hot path cannot afford (docs/benchmarks.md),
and its files and locks are internal to it. A router of one process keeps its values in
anonymous memory: the same code, nothing on disk.

Layout: `FOLDER/<pid>-<start time>/index.jsonl` (one JSON line per slot range: the family,
its labels, the histogram bounds; or a retirement) and `values-<n>.bin` segments of
`SEGMENT_SLOTS` doubles, sparse, never moved once mapped.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.supervision import ProcessIdentity

SEGMENT_SLOTS = 8192
"""Doubles per segment (64 KiB): a family's child never spans two."""
SLOT_BYTES = 8


@dataclass(frozen=True)
class Entry:
    """A range of slots and what it holds: one child of one family."""

    number: int
    family: str
    labels: tuple[str, ...]
    segment: int
    offset: int
    slots: int
    bounds: tuple[float, ...] = ()
    """A histogram's bucket bounds (+Inf last): its slots are one count per bound, then the sum."""

    def line(self) -> bytes:
        """Write this entry as one line of the index."""
        fields = {
            "number": self.number, "family": self.family, "labels": list(self.labels),
            "segment": self.segment, "offset": self.offset, "slots": self.slots,
            "bounds": [repr(bound) for bound in self.bounds],
        }  # fmt: skip
        return (json.dumps(fields) + "\n").encode()

    @classmethod
    def parse(cls, fields: dict[str, object]) -> Entry:
        """Read an index line's entry (KeyError, TypeError, ValueError if it is not one)."""
        bounds = fields["bounds"]
        labels = fields["labels"]
        if not isinstance(bounds, list) or not isinstance(labels, list):
            raise TypeError("bounds and labels are lists")
        return cls(
            number=int(str(fields["number"])),
            family=str(fields["family"]),
            labels=tuple(str(label) for label in labels),
            segment=int(str(fields["segment"])),
            offset=int(str(fields["offset"])),
            slots=int(str(fields["slots"])),
            bounds=tuple(float(bound) for bound in bounds),
        )


@dataclass
class InstanceValues:
    """One process's entries and their values, as read at one moment."""

    entries: list[Entry]
    segments: list[memoryview[float]]
    """Per segment, its doubles."""
    live: bool
    """Whether the process still runs (gauges are taken from running processes only)."""

    def values(self, entry: Entry) -> list[float]:
        """Return the values in the slots of `entry`."""
        segment = self.segments[entry.segment]
        return [float(value) for value in segment[entry.offset : entry.offset + entry.slots]]


@dataclass
class ValueStore:
    """This process's metric values, in `folder` when processes share them, else in memory."""

    folder: Path | None = None
    """The router's shared folder (`--workers`): this process writes in a folder of its own."""
    _mine: Path | None = field(default=None, init=False)
    _maps: list[mmap.mmap] = field(default_factory=list, init=False)
    _views: list[memoryview[float]] = field(default_factory=list, init=False)
    _used: int = field(default=SEGMENT_SLOTS, init=False)
    _entries: dict[int, Entry] = field(default_factory=dict, init=False)
    """The entries not retired, by number."""
    _numbered: int = field(default=0, init=False)
    _index: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.folder is not None:
            identity = ProcessIdentity.of(os.getpid())
            started = identity.started if identity is not None else 0
            self._mine = self.folder / f"{os.getpid()}-{started}"
            self._mine.mkdir(mode=0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL
            self._index = os.open(self._mine / "index.jsonl", flags, 0o600)

    def allocate(
        self, family: str, labels: tuple[str, ...], slots: int, bounds: tuple[float, ...] = ()
    ) -> tuple[memoryview[float], int, Entry]:
        """Reserve `slots` zeroed doubles for one child.

        Return its segment's view, its first slot, and its entry (announced in the index
        before any value is written).
        """
        if slots > SEGMENT_SLOTS:
            raise ValueError(f"{family}: {slots} slots do not fit a segment of {SEGMENT_SLOTS}")
        if self._used + slots > SEGMENT_SLOTS:
            self._add_segment()
        entry = Entry(
            self._numbered, family, labels, len(self._views) - 1, self._used, slots, bounds
        )
        self._numbered += 1
        self._used += slots
        self._entries[entry.number] = entry
        if self._index is not None:
            os.write(self._index, entry.line())
        return self._views[entry.segment], entry.offset, entry

    def retire(self, entry: Entry) -> None:
        """Stop showing `entry` (a child dropped: its outputs or bounds are no longer counted)."""
        self._entries.pop(entry.number, None)
        if self._index is not None:
            os.write(self._index, (json.dumps({"retired": entry.number}) + "\n").encode())

    def _add_segment(self) -> None:
        size = SEGMENT_SLOTS * SLOT_BYTES
        if self._mine is None:
            segment = mmap.mmap(-1, size)
        else:
            path = self._mine / f"values-{len(self._maps)}.bin"
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(descriptor, size)
                segment = mmap.mmap(descriptor, size)
            finally:
                os.close(descriptor)
        self._maps.append(segment)
        self._views.append(memoryview(segment).cast("d"))
        self._used = 0

    def read(self) -> Iterator[InstanceValues]:
        """Read this process's values, then every other process's in the shared folder."""
        yield InstanceValues(list(self._entries.values()), self._views, live=True)
        if self.folder is None:
            return
        for other in sorted(self.folder.iterdir()):
            if other != self._mine:
                read = _read_instance(other)
                if read is not None:
                    yield read


def _read_instance(folder: Path) -> InstanceValues | None:
    """Another process's values; None if its folder is not (yet) one."""
    try:
        pid, started = (int(part) for part in folder.name.split("-"))
        lines = (folder / "index.jsonl").read_bytes().splitlines()
    except (OSError, ValueError):
        return None
    entries: dict[int, Entry] = {}
    for line in lines:
        try:
            fields = json.loads(line)
            if "retired" in fields:
                entries.pop(int(fields["retired"]), None)
            else:
                entry = Entry.parse(fields)
                entries[entry.number] = entry
        except (ValueError, KeyError, TypeError):
            continue  # a line being written as this reads: its values are still zero
    segments: list[memoryview[float]] = []
    for number in range(max((entry.segment for entry in entries.values()), default=-1) + 1):
        try:
            raw = (folder / f"values-{number}.bin").read_bytes()
        except OSError:
            raw = b""
        raw = raw[: len(raw) - len(raw) % SLOT_BYTES].ljust(SEGMENT_SLOTS * SLOT_BYTES, b"\0")
        segments.append(memoryview(raw).cast("d"))
    live = ProcessIdentity(pid, started).alive()
    return InstanceValues(list(entries.values()), segments, live)
