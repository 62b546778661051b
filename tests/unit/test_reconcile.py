"""The reconciliation of a participant's file against a clearing window (tidebank.cluster.reconcile): pure, no
cluster."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidebank.cluster.reconcile import FileError, Obligation, read_file_rows, reconcile
from tidebank.common.keys import U64_MAX


@dataclass
class Item:
    """What reconcile reads of a ClearingItem."""

    id: int
    payer_id: int
    payee_id: int
    amount: int
    status: int = 0  # accepted


def rows(text: str) -> list[Obligation]:
    return list(read_file_rows(text.splitlines(keepends=True)))


def row(i: int, payer: int = 1, payee: int = 2, amount: int = 100, line: int = 0) -> Obligation:
    return Obligation(i, payer, payee, amount, line or i + 1)


def item(i: int, payer: int = 1, payee: int = 2, amount: int = 100, status: int = 0) -> Item:
    return Item(i, payer, payee, amount, status)


# ---- reading the file -------------------------------------------------------------------


def test_the_file_rows_are_read_with_their_line_numbers() -> None:
    assert rows("id,payer_id,payee_id,amount\n5,1,2,100\n6,2,1,7\n") == [Obligation(5, 1, 2, 100, 2),
                                                                        Obligation(6, 2, 1, 7, 3)]


def test_columns_may_come_in_any_order_among_others() -> None:
    assert rows("ref,amount,payee_id,id,payer_id\nx,100,2,5,1\n") == [Obligation(5, 1, 2, 100, 2)]


def test_hex_and_leading_zeros_are_integers() -> None:
    assert rows("id,payer_id,payee_id,amount\n0x10,007,2,0100\n") == [Obligation(16, 7, 2, 100, 2)]


def test_blank_lines_are_skipped() -> None:
    assert rows("id,payer_id,payee_id,amount\n\n5,1,2,100\n ,,,\n") == [Obligation(5, 1, 2, 100, 3)]


def test_a_header_lacking_a_column_is_a_file_error() -> None:
    with pytest.raises(FileError, match="lacks amount") as caught:
        rows("id,payer_id,payee_id\n5,1,2\n")
    assert caught.value.line == 1


def test_a_file_without_a_header_is_a_file_error() -> None:
    with pytest.raises(FileError, match="header"):
        rows("5,1,2,100\n")


def test_an_empty_file_is_a_file_error() -> None:
    with pytest.raises(FileError, match="empty"):
        rows("")


@pytest.mark.parametrize("bad", ["ten", "1.5", "-3", "", "0x"])
def test_a_field_that_is_not_an_integer_is_a_file_error_naming_its_line(bad: str) -> None:
    with pytest.raises(FileError) as caught:
        rows(f"id,payer_id,payee_id,amount\n5,1,2,100\n6,1,2,{bad}\n")
    assert caught.value.line == 3 and "amount" in str(caught.value)


@pytest.mark.parametrize(("column", "value"), [("amount", str(U64_MAX + 1)), ("amount", "0"), ("id", "0"),
                                               ("payer_id", str(2**128 - 1))])
def test_a_field_out_of_range_is_a_file_error(column: str, value: str) -> None:
    fields = {"id": "5", "payer_id": "1", "payee_id": "2", "amount": "100", column: value}
    with pytest.raises(FileError, match=column):
        rows("id,payer_id,payee_id,amount\n" + ",".join(fields.values()) + "\n")


def test_a_short_row_is_a_file_error() -> None:
    with pytest.raises(FileError, match="fields") as caught:
        rows("id,payer_id,payee_id,amount\n5,1,2\n")
    assert caught.value.line == 2


# ---- comparing --------------------------------------------------------------------------


def test_identical_records_agree() -> None:
    report = reconcile([row(1), row(2)], [item(1), item(2)])
    assert report.agree and report.matched == 2
    assert (report.file_items, report.window_items) == (2, 2)


def test_an_item_only_in_the_window_is_missing() -> None:
    report = reconcile([row(1)], [item(1), item(2, amount=5)])
    assert not report.agree
    assert (report.missing, report.extra, report.mismatched) == (1, 0, 0)
    assert report.first_missing == [Obligation(2, 1, 2, 5)]


def test_an_item_only_in_the_file_is_extra() -> None:
    report = reconcile([row(1), row(2)], [item(2)])
    assert (report.missing, report.extra, report.mismatched) == (0, 1, 0)
    assert report.first_extra == [row(1)]


@pytest.mark.parametrize(("field", "changed"), [("payer_id", item(1, payer=3)), ("payee_id", item(1, payee=3)),
                                                ("amount", item(1, amount=99))])
def test_the_same_id_with_other_terms_is_mismatched_naming_the_field(field: str, changed: Item) -> None:
    report = reconcile([row(1)], [changed])
    assert (report.missing, report.extra, report.mismatched) == (0, 0, 1)
    [m] = report.first_mismatched
    assert m.fields == [field] and m.file == row(1) and m.window.id == 1


def test_the_file_may_be_in_any_order() -> None:
    assert reconcile([row(3), row(1), row(2)], [item(1), item(2), item(3)]).agree


def test_unwound_window_items_are_not_compared() -> None:
    report = reconcile([row(1)], [item(1), item(2, status=1)])
    assert report.agree and report.window_items == 1


def test_a_repeated_id_in_the_file_is_a_file_error_naming_both_lines() -> None:
    with pytest.raises(FileError, match="repeats line 2") as caught:
        reconcile([row(1, line=2), row(1, line=7)], [])
    assert caught.value.line == 7


def test_window_items_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        reconcile([], [item(2), item(1)])


def test_every_difference_is_counted_but_only_the_first_are_kept() -> None:
    report = reconcile([], [item(i) for i in range(1, 51)], shown=5)
    assert report.missing == 50
    assert [o.id for o in report.first_missing] == [1, 2, 3, 4, 5]


def test_the_extra_ones_kept_are_those_with_the_smallest_ids() -> None:
    report = reconcile([row(i) for i in (9, 4, 7, 1, 8)], [], shown=2)
    assert report.extra == 5 and [o.id for o in report.first_extra] == [1, 4]

