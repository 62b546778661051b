"""Reconcile a participant's own record of a clearing window against the window's accepted items.

Pure: no I/O, no client. The participant's file (CSV with a header naming at least
``id,payer_id,payee_id,amount``) is read by ``read_file_rows``; ``reconcile`` compares
those rows with the window's items as ``export_statement`` streams them (sorted by id)
and says what differs:

* missing: in the window, not in the file;
* extra: in the file, not in the window;
* mismatched: the same id with another payer, payee or amount.

The window side is streamed (one item at a time); the file side is held by id, which
the duplicate check needs anyway and which lets the file be in any order. A file that
cannot be read as such (bad header, a field that is not an integer in range, a repeated
id) is a ``FileError`` naming its line, never a difference.
"""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tidebank.common.keys import U64_MAX, U128_MAX

__all__ = [
    "FILE_COLUMNS",
    "FileError",
    "Mismatch",
    "Obligation",
    "ReconcileReport",
    "parse_int_field",
    "read_file_rows",
    "reconcile",
]

#: The columns a participant's file must name in its header (others are ignored).
FILE_COLUMNS = ("id", "payer_id", "payee_id", "amount")
#: How many differences of each kind a report keeps (the counts cover all of them).
SHOWN_DEFAULT = 20
_ACCEPTED = 0  # ClearingItemStatus.ACCEPTED: only accepted items count in a window (and in its digest)


class FileError(ValueError):
    """The participant's file is malformed; ``line`` is its 1-based line number (0: the file as a whole)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Obligation:
    """One item as either side has it; ``line`` is where the file has it (0 for the window's side)."""

    id: int
    payer_id: int
    payee_id: int
    amount: int
    line: int = 0

    def terms(self) -> tuple[int, int, int]:
        return self.payer_id, self.payee_id, self.amount


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One id whose terms differ: the file's row and the window's item."""

    file: Obligation
    window: Obligation

    @property
    def fields(self) -> list[str]:
        """The names of the fields that differ."""
        names = ("payer_id", "payee_id", "amount")
        return [n for n, a, b in zip(names, self.file.terms(), self.window.terms(), strict=True) if a != b]


@dataclass(slots=True)
class ReconcileReport:
    """Counts of every kind of difference, and the first ones of each kind (by id)."""

    file_items: int = 0
    window_items: int = 0
    matched: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    first_missing: list[Obligation] = field(default_factory=list)
    first_extra: list[Obligation] = field(default_factory=list)
    first_mismatched: list[Mismatch] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.mismatched == 0


def parse_int_field(text: str, name: str, maximum: int, minimum: int = 0) -> int:
    """A CSV field as an int in ``minimum..maximum``: decimal (leading zeros allowed) or 0x hex.
    ValueError (saying which field and why) otherwise."""
    t = text.strip()
    try:
        value = int(t[2:], 16) if t[:2].lower() == "0x" else int(t, 10)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} {value} is out of range ({minimum}..{maximum})")
    return value


_ID_MAX = U128_MAX - 1  # ids are 1 .. 2^128-2


def read_file_rows(lines: Iterable[str]) -> Iterator[Obligation]:
    """The rows of a participant's CSV (text lines, the header first), each checked; blank lines are skipped.
    Raises FileError for a bad header or a bad field."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise FileError(0, f"the file is empty (a header naming {','.join(FILE_COLUMNS)} is required)") from None
    except csv.Error as exc:
        raise FileError(1, str(exc)) from None
    names = [h.strip().lower() for h in header]
    lacking = [c for c in FILE_COLUMNS if c not in names]
    if lacking:
        raise FileError(1, f"the header must name {','.join(FILE_COLUMNS)} (lacks {','.join(lacking)})")
    twice = [c for c in FILE_COLUMNS if names.count(c) > 1]
    if twice:
        raise FileError(1, f"the header names {','.join(twice)} twice")
    at = [names.index(c) for c in FILE_COLUMNS]
    width = max(at) + 1
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < width:
                raise FileError(line, f"{len(row)} fields, the header has {len(names)}")
            try:
                yield Obligation(
                    parse_int_field(row[at[0]], "id", _ID_MAX, 1),
                    parse_int_field(row[at[1]], "payer_id", _ID_MAX, 1),
                    parse_int_field(row[at[2]], "payee_id", _ID_MAX, 1),
                    parse_int_field(row[at[3]], "amount", U64_MAX, 1),
                    line,
                )
            except ValueError as exc:
                raise FileError(line, str(exc)) from None
    except csv.Error as exc:
        raise FileError(reader.line_num, str(exc)) from None


def reconcile(
    file_rows: Iterable[Obligation], window_items: Iterable[Any], shown: int = SHOWN_DEFAULT
) -> ReconcileReport:
    """Compare the file's rows (any order) with the window's items (ClearingItem-like: id, payer_id, payee_id,
    amount, status; sorted by id; items not accepted are skipped). Raises FileError for an id the file repeats,
    ValueError when the window's items are not sorted by id."""
    report = ReconcileReport()
    by_id: dict[int, Obligation] = {}
    for row in file_rows:
        earlier = by_id.get(row.id)
        if earlier is not None:
            raise FileError(row.line, f"id {row.id} repeats line {earlier.line}")
        by_id[row.id] = row
    report.file_items = len(by_id)
    previous = -1
    for item in window_items:
        if getattr(item, "status", _ACCEPTED) != _ACCEPTED:
            continue
        if item.id <= previous:
            raise ValueError(f"the window's items are not sorted by id ({item.id} after {previous})")
        previous = item.id
        report.window_items += 1
        theirs = Obligation(int(item.id), int(item.payer_id), int(item.payee_id), int(item.amount))
        mine = by_id.pop(theirs.id, None)
        if mine is None:
            report.missing += 1
            if len(report.first_missing) < shown:
                report.first_missing.append(theirs)
        elif mine.terms() != theirs.terms():
            report.mismatched += 1
            if len(report.first_mismatched) < shown:
                report.first_mismatched.append(Mismatch(mine, theirs))
        else:
            report.matched += 1
    report.extra = len(by_id)
    report.first_extra = [by_id[i] for i in heapq.nsmallest(shown, by_id)]
    return report
