"""SQL fragments carry their own parameters; putting them together refuses clashing names."""

from __future__ import annotations

import pytest

from callsight.core.errors import InvalidArgument
from callsight.storage.filters import CallFilter, filtered_calls
from callsight.storage.sql import ParameterClash, Sql, compose, joined
from callsight.storage.tables import DEFAULT_TABLES, Tables


def test_composing_merges_the_parameters_of_every_part() -> None:
    calls = Sql("SELECT * FROM calls WHERE tenant_id = {tenant:String}", {"tenant": "t1"})
    page = Sql("WHERE client_key > {after:UInt64}", {"after": 7})
    query = compose(
        "SELECT count() FROM ($calls) $page LIMIT {limit:UInt32}", calls=calls, page=page
    )
    query = query.bind(limit=10)
    assert query.text == (
        "SELECT count() FROM (SELECT * FROM calls WHERE tenant_id = {tenant:String})"
        " WHERE client_key > {after:UInt64} LIMIT {limit:UInt32}"
    )
    assert dict(query.params) == {"tenant": "t1", "after": 7, "limit": 10}


def test_a_name_bound_to_two_values_is_refused() -> None:
    first = Sql("snapshot_ms <= {snapshot_ms:Int64}", {"snapshot_ms": 1})
    second = Sql("snapshot_ms <= {snapshot_ms:Int64}", {"snapshot_ms": 2})
    with pytest.raises(ParameterClash, match="snapshot_ms"):
        compose("$a AND $b", a=first, b=second)
    with pytest.raises(ParameterClash):
        first + second
    with pytest.raises(ParameterClash):
        joined(" AND ", [first, second])
    with pytest.raises(ParameterClash):
        first.bind(snapshot_ms=3)


def test_the_same_name_bound_to_the_same_value_is_one_parameter() -> None:
    f = CallFilter("t1", 0, 1000, "UTC", employee_ids=("e1",))
    keys = filtered_calls(f, "client_key", snapshot_ms=50)
    rows = filtered_calls(f, "client_key, name_key", snapshot_ms=50)
    query = compose("SELECT * FROM ($rows) WHERE client_key IN ($keys)", rows=rows, keys=keys)
    assert query.params["tenant"] == "t1" and query.params["employee_ids"] == ["e1"]
    # Two snapshots in one query would read two different sets of calls: refused.
    with pytest.raises(ParameterClash):
        compose("$a $b", a=keys, b=filtered_calls(f, "client_key", snapshot_ms=51))


def test_fragments_do_not_change_once_made() -> None:
    params = {"tenant": "t1"}
    fragment = Sql("tenant_id = {tenant:String}", params)
    params["tenant"] = "t2"
    assert fragment.params["tenant"] == "t1"
    with pytest.raises(TypeError):
        fragment.params["tenant"] = "t3"  # type: ignore[index]


def test_a_template_part_that_is_missing_is_an_error() -> None:
    with pytest.raises(KeyError):
        compose("SELECT * FROM ($calls)")


def test_table_names_are_validated_and_used() -> None:
    f = CallFilter("t1", 0, 1000, "UTC")
    assert " FROM calls FINAL " in filtered_calls(f).text
    naive = filtered_calls(f, tables=Tables(calls="calls_naive")).text
    assert " FROM calls_naive FINAL " in naive and " FROM excluded_numbers FINAL " in naive
    assert Tables() == DEFAULT_TABLES
    for bad in ("calls; DROP TABLE calls", "calls FINAL", "", "1calls", "db.calls"):
        with pytest.raises(InvalidArgument):
            Tables(calls=bad)
