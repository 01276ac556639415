"""Parity reads end to end: GetCalls, GetExcludedNumbers, ListLeads and ListContacts.

Data goes in through the real RPCs (a device's Upload, ImportLeads, SetExcludedNumbers) and
comes back decrypted through a real server; every test also checks what another tenant's key and
a REPORTS key get.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from callsight.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
    report_pb2,
    report_pb2_grpc,
)
from tests.integration.helpers import (
    Metadata,
    Tenant,
    auth,
    enroll,
    expect_status,
    new_employee,
    new_tenant,
)

CODE = grpc.StatusCode
T = common_pb2


def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel)


def reports(channel: grpc.aio.Channel) -> report_pb2_grpc.ReportServiceStub:
    return report_pb2_grpc.ReportServiceStub(channel)


async def reports_key(channel: grpc.aio.Channel, tenant: Tenant) -> Metadata:
    response = await admin(channel).CreateApiKey(
        admin_pb2.CreateApiKeyRequest(name="dashboard", role=T.ROLE_REPORTS),
        metadata=tenant.admin,
    )
    return auth(response.api_key)


async def upload(channel: grpc.aio.Channel, token: str, seq: int, **payload: Any) -> None:
    ack = await ingest_pb2_grpc.IngestServiceStub(channel).Upload(
        ingest_pb2.UploadRequest(seq=seq, batch_id=f"b{seq}", **payload),
        metadata=auth(token),
    )
    assert ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED and ack.rejected == 0, ack


def record(call_id: str, number: str, started_at_ms: int, **fields: Any) -> ingest_pb2.CallRecord:
    fields.setdefault("type", T.CALL_TYPE_INCOMING)
    return ingest_pb2.CallRecord(
        call_id=call_id, number=number, started_at_ms=started_at_ms, **fields
    )


def ref(device_id: str, call_id: str) -> report_pb2.CallRef:
    return report_pb2.CallRef(device_id=device_id, call_id=call_id)


async def test_get_calls_newest_version_in_request_order_with_missing(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Asha", "+919800000001")
    device = await enroll(channel, tenant, employee)
    lead = await admin(channel).ImportLeads(
        admin_pb2.ImportLeadsRequest(leads=[admin_pb2.Lead(primary_number="+919311111111")]),
        metadata=tenant.admin,
    )
    now = int(time.time() * 1000)
    t0 = now - 3_600_000
    await upload(
        channel,
        device.device_token,
        1,
        calls=ingest_pb2.CallLogBatch(
            records=[
                record(
                    "a",
                    "09311111111",
                    t0,
                    name="Ravi",
                    type=T.CALL_TYPE_OUTGOING,
                    duration_s=30,
                    note="first",
                ),
                record("b", "+919322222222", t0 + 1000, type=T.CALL_TYPE_MISSED),
                record("x", "+919333333333", t0 + 2000, type=T.CALL_TYPE_INCOMING, duration_s=5),
            ]
        ),
    )
    # A newer version of "a": GetCalls shows it, not the first.
    await upload(
        channel,
        device.device_token,
        2,
        calls=ingest_pb2.CallLogBatch(
            records=[
                record(
                    "a",
                    "09311111111",
                    t0,
                    name="Ravi",
                    type=T.CALL_TYPE_OUTGOING,
                    duration_s=45,
                    note="second",
                    updated_at_ms=t0 + 60_000,
                )
            ]
        ),
    )
    # A personal number: reports leave its calls out, and so does GetCalls.
    await admin(channel).SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=["+91 93333 33333"]), metadata=tenant.admin
    )
    other = await new_tenant(channel)
    other_employee = await new_employee(channel, other, "Other", "+919800000002")
    other_device = await enroll(channel, other, other_employee)
    await upload(
        channel,
        other_device.device_token,
        1,
        calls=ingest_pb2.CallLogBatch(records=[record("o", "+919344444444", t0)]),
    )

    wanted = [
        ref(device.device_id, "b"),
        ref(device.device_id, "nope"),
        ref(device.device_id, "a"),
        ref(other_device.device_id, "o"),
        ref(device.device_id, "x"),
        ref("no-such-device", "a"),
    ]
    response = await reports(channel).GetCalls(
        report_pb2.GetCallsRequest(calls=wanted), metadata=await reports_key(channel, tenant)
    )
    assert [(c.device_id, c.call_id) for c in response.calls] == [
        (device.device_id, "b"),
        (device.device_id, "a"),
    ]
    missed, called = response.calls
    assert (called.number, called.name, called.type) == (
        "+919311111111",
        "Ravi",
        T.CALL_TYPE_OUTGOING,
    )
    assert (called.duration_s, called.note, called.started_at_ms) == (45, "second", t0)
    assert called.employee_id == employee
    assert called.lead_id == lead.leads[0].lead_id
    assert called.synced_at_ms >= now - 60_000
    assert (missed.number, missed.type, missed.duration_s, missed.lead_id) == (
        "+919322222222",
        T.CALL_TYPE_MISSED,
        0,
        "",
    )
    assert [(m.device_id, m.call_id) for m in response.missing] == [
        (device.device_id, "nope"),
        (other_device.device_id, "o"),
        (device.device_id, "x"),
        ("no-such-device", "a"),
    ]

    # A ref asked for twice is answered twice.
    twice = await reports(channel).GetCalls(
        report_pb2.GetCallsRequest(calls=[ref(device.device_id, "a")] * 2), metadata=tenant.admin
    )
    assert [(c.call_id, c.duration_s) for c in twice.calls] == [("a", 45), ("a", 45)]

    # The other tenant's key finds none of these calls, and its own only.
    response = await reports(channel).GetCalls(
        report_pb2.GetCallsRequest(calls=wanted), metadata=other.admin
    )
    assert [(c.device_id, c.call_id, c.number) for c in response.calls] == [
        (other_device.device_id, "o", "+919344444444")
    ]
    assert len(response.missing) == len(wanted) - 1


async def test_get_calls_refuses_bad_requests(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    get_calls = reports(channel).GetCalls
    error = await expect_status(
        get_calls(report_pb2.GetCallsRequest(), metadata=tenant.admin), CODE.INVALID_ARGUMENT
    )
    assert error.details() == "calls is empty; name at least one call (device_id and call_id)"
    too_many = [ref("d", str(i)) for i in range(1001)]
    error = await expect_status(
        get_calls(report_pb2.GetCallsRequest(calls=too_many), metadata=tenant.admin),
        CODE.INVALID_ARGUMENT,
    )
    assert error.details() == (
        "calls has 1001 entries; the limit is 1000, split the ids into several requests"
    )
    error = await expect_status(
        get_calls(
            report_pb2.GetCallsRequest(calls=[ref("d", "1"), ref("", "2"), ref("d", "x" * 129)]),
            metadata=tenant.admin,
        ),
        CODE.INVALID_ARGUMENT,
    )
    assert error.details() == (
        "calls[1].device_id is required; calls[2].call_id is 129 bytes (UTF-8); the limit is 128"
    )
    # Exactly the limit is fine, and names nothing found.
    response = await get_calls(
        report_pb2.GetCallsRequest(calls=too_many[:1000]), metadata=tenant.admin
    )
    assert (len(response.calls), len(response.missing)) == (0, 1000)
    await expect_status(
        get_calls(report_pb2.GetCallsRequest(calls=[ref("d", "1")])), CODE.UNAUTHENTICATED
    )


async def test_excluded_numbers_read_back_decrypted_and_sorted(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    other = await new_tenant(channel)
    stub = admin(channel)
    empty = await stub.GetExcludedNumbers(
        admin_pb2.GetExcludedNumbersRequest(), metadata=tenant.admin
    )
    assert list(empty.numbers) == []

    await stub.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(
            numbers=["098765 43210", "+91 91234 56789", "+919876543210", "+1 650 253 0000"]
        ),
        metadata=tenant.admin,
    )
    await stub.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=["+919000000009"]), metadata=other.admin
    )
    got = await stub.GetExcludedNumbers(
        admin_pb2.GetExcludedNumbersRequest(), metadata=tenant.admin
    )
    assert list(got.numbers) == ["+16502530000", "+919123456789", "+919876543210"]
    got = await stub.GetExcludedNumbers(admin_pb2.GetExcludedNumbersRequest(), metadata=other.admin)
    assert list(got.numbers) == ["+919000000009"]

    # The list is replaced, not added to.
    await stub.SetExcludedNumbers(
        admin_pb2.SetExcludedNumbersRequest(numbers=["+919123456789"]), metadata=tenant.admin
    )
    got = await stub.GetExcludedNumbers(
        admin_pb2.GetExcludedNumbersRequest(), metadata=tenant.admin
    )
    assert list(got.numbers) == ["+919123456789"]

    error = await expect_status(
        stub.GetExcludedNumbers(
            admin_pb2.GetExcludedNumbersRequest(), metadata=await reports_key(channel, tenant)
        ),
        CODE.PERMISSION_DENIED,
    )
    assert "ROLE_ADMIN" in (error.details() or "")


async def every_page(
    channel: grpc.aio.Channel, metadata: Metadata, listing: str, page_size: int, **kw: Any
) -> list[Any]:
    """Every row of ListLeads or ListContacts, page by page; each page but the last is full."""
    request_cls, field = {
        "ListLeads": (admin_pb2.ListLeadsRequest, "leads"),
        "ListContacts": (admin_pb2.ListContactsRequest, "contacts"),
    }[listing]
    rpc = getattr(admin(channel), listing)
    rows: list[Any] = []
    token = ""
    for _ in range(1000):
        response = await rpc(
            request_cls(page_size=page_size, page_token=token, **kw), metadata=metadata
        )
        page = list(getattr(response, field))
        rows += page
        token = response.next_page_token
        if not token:
            assert len(page) <= (page_size or 100)
            return rows
        assert len(page) == (page_size or 100)
    raise AssertionError("paging did not end")


async def list_leads(
    channel: grpc.aio.Channel, metadata: Metadata, page_size: int, **kw: Any
) -> list[admin_pb2.StoredLead]:
    return await every_page(channel, metadata, "ListLeads", page_size, **kw)


async def test_list_leads_pages_filters_and_first_calls(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    asha = await new_employee(channel, tenant, "Asha", "+919800000011", tags=("north",))
    ravi = await new_employee(channel, tenant, "Ravi", "+919800000012")
    stub = admin(channel)
    first = await stub.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[
                admin_pb2.Lead(
                    primary_number=f"+9193000000{i:02d}",
                    first_name=f"Lead {i}",
                    company="Acme" if i == 0 else "",
                    secondary_number="+919399999999" if i == 0 else "",
                    tags=["hot"] if i % 3 == 0 else ["cold"],
                    employee_id=asha if i % 2 == 0 else ravi,
                    city="Pune",
                    state="MH",
                )
                for i in range(13)
            ],
            strategy=admin_pb2.ASSIGNMENT_STRATEGY_EXPLICIT,
        ),
        metadata=tenant.admin,
    )
    await asyncio.sleep(0.005)  # the second import is newer by at least a millisecond
    second = await stub.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[admin_pb2.Lead(primary_number=f"+9193000001{i:02d}") for i in range(9)],
            employee_ids=[ravi],
        ),
        metadata=tenant.admin,
    )
    ids = {r.lead_id for r in first.leads} | {r.lead_id for r in second.leads}
    assert len(ids) == 22

    every = await list_leads(channel, tenant.admin, 5)
    assert [x.lead_id for x in every] == [
        x.lead_id for x in await list_leads(channel, tenant.admin, 0)
    ]
    assert len(every) == 22 and {x.lead_id for x in every} == ids
    # Newest first, then by lead id (descending) within one import.
    keys = [(x.created_at_ms, x.lead_id) for x in every]
    assert keys == sorted(keys, reverse=True)
    assert {x.lead_id for x in every[:9]} == {r.lead_id for r in second.leads}
    by_id = {x.lead_id: x for x in every}
    lead0 = by_id[first.leads[0].lead_id]
    assert lead0.employee_id == asha == lead0.lead.employee_id
    assert (lead0.lead.first_name, lead0.lead.company, lead0.lead.city, lead0.lead.state) == (
        "Lead 0",
        "Acme",
        "Pune",
        "MH",
    )
    assert (lead0.lead.primary_number, lead0.lead.secondary_number) == (
        "+919300000000",
        "+919399999999",
    )
    assert list(lead0.lead.tags) == ["hot"]
    assert all(x.first_call_at_ms == 0 for x in every)

    # Asha calls lead 0 on its secondary number, and lead 1 (Ravi's): only lead 0 is called,
    # by its assigned employee. A call before a lead existed is no call to it.
    device = await enroll(channel, tenant, asha)
    now = int(time.time() * 1000)
    await upload(
        channel,
        device.device_token,
        1,
        calls=ingest_pb2.CallLogBatch(
            records=[
                record("c1", "+919399999999", now, type=T.CALL_TYPE_OUTGOING, duration_s=10),
                record("c2", "+919399999999", now + 5000, type=T.CALL_TYPE_OUTGOING),
                record("c3", "+919300000001", now, type=T.CALL_TYPE_OUTGOING),
                record("c4", "+919300000002", lead0.created_at_ms - 60_000),
            ]
        ),
    )
    every = await list_leads(channel, tenant.admin, 4)
    called = {x.lead_id: x.first_call_at_ms for x in every if x.first_call_at_ms}
    assert called == {lead0.lead_id: now}
    uncalled = await list_leads(channel, tenant.admin, 4, uncalled_only=True)
    assert [x.lead_id for x in uncalled] == [x.lead_id for x in every if x.lead_id not in called]

    mine = await list_leads(channel, tenant.admin, 3, employee_ids=[asha])
    assert {x.lead_id for x in mine} == {r.lead_id for r in first.leads if r.employee_id == asha}
    assert len(mine) == 7
    hot = await list_leads(channel, tenant.admin, 2, tags=["hot", "warm"])
    assert sorted(x.lead.first_name for x in hot) == sorted(f"Lead {i}" for i in (0, 3, 6, 9, 12))
    hot_uncalled = await list_leads(
        channel, tenant.admin, 2, tags=["hot"], employee_ids=[asha], uncalled_only=True
    )
    assert sorted(x.lead.first_name for x in hot_uncalled) == ["Lead 12", "Lead 6"]
    none = await list_leads(channel, tenant.admin, 2, employee_ids=["no-such-employee"])
    assert none == []

    other = await new_tenant(channel)
    assert await list_leads(channel, other.admin, 10) == []


async def test_list_leads_and_contacts_refuse_bad_pages_and_reports_keys(
    channel: grpc.aio.Channel,
) -> None:
    tenant = await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Asha", "+919800000021")
    stub = admin(channel)
    await stub.ImportLeads(
        admin_pb2.ImportLeadsRequest(
            leads=[admin_pb2.Lead(primary_number=f"+9193000002{i:02d}") for i in range(3)]
        ),
        metadata=tenant.admin,
    )
    device = await enroll(channel, tenant, employee)
    await upload(
        channel,
        device.device_token,
        1,
        contacts=ingest_pb2.ContactBatch(
            records=[
                ingest_pb2.Contact(contact_id=f"k{i}", name="N", numbers=["+919311100000"])
                for i in range(3)
            ]
        ),
    )
    leads_page = await stub.ListLeads(
        admin_pb2.ListLeadsRequest(page_size=1), metadata=tenant.admin
    )
    contacts_page = await stub.ListContacts(
        admin_pb2.ListContactsRequest(page_size=1), metadata=tenant.admin
    )
    assert leads_page.next_page_token and contacts_page.next_page_token

    cases: list[tuple[Any, str]] = [
        (
            stub.ListLeads(admin_pb2.ListLeadsRequest(page_size=1001), metadata=tenant.admin),
            "page_size 1001 is over the maximum of 1000",
        ),
        (
            stub.ListContacts(admin_pb2.ListContactsRequest(page_size=5000), metadata=tenant.admin),
            "page_size 5000 is over the maximum of 1000",
        ),
        (
            stub.ListLeads(admin_pb2.ListLeadsRequest(page_token="junk"), metadata=tenant.admin),
            "page_token is not a token this server issued, or was altered",
        ),
        (
            # A token of one listing is refused by the other, and under another filter.
            stub.ListLeads(
                admin_pb2.ListLeadsRequest(page_token=contacts_page.next_page_token),
                metadata=tenant.admin,
            ),
            "page_token belongs to another report or filter; send the same filter as for the"
            " first page, or start again without a token",
        ),
        (
            stub.ListLeads(
                admin_pb2.ListLeadsRequest(
                    page_token=leads_page.next_page_token, uncalled_only=True
                ),
                metadata=tenant.admin,
            ),
            "page_token belongs to another report or filter; send the same filter as for the"
            " first page, or start again without a token",
        ),
        (
            stub.ListContacts(
                admin_pb2.ListContactsRequest(
                    page_token=contacts_page.next_page_token, employee_ids=[employee]
                ),
                metadata=tenant.admin,
            ),
            "page_token belongs to another report or filter; send the same filter as for the"
            " first page, or start again without a token",
        ),
        (
            stub.ListLeads(admin_pb2.ListLeadsRequest(tags=["t" * 65]), metadata=tenant.admin),
            "tags[0] is 65 bytes (UTF-8); the limit is 64",
        ),
        (
            stub.ListContacts(
                admin_pb2.ListContactsRequest(employee_ids=["e" * 129]), metadata=tenant.admin
            ),
            "employee_ids[0] is 129 bytes (UTF-8); the limit is 128",
        ),
    ]
    for call, message in cases:
        error = await expect_status(call, CODE.INVALID_ARGUMENT)
        assert error.details() == message

    # Another tenant's key cannot continue this tenant's listing.
    other = await new_tenant(channel)
    await expect_status(
        stub.ListLeads(
            admin_pb2.ListLeadsRequest(page_token=leads_page.next_page_token), metadata=other.admin
        ),
        CODE.INVALID_ARGUMENT,
    )

    reporter = await reports_key(channel, tenant)
    for call in (
        stub.ListLeads(admin_pb2.ListLeadsRequest(), metadata=reporter),
        stub.ListContacts(admin_pb2.ListContactsRequest(), metadata=reporter),
        stub.GetExcludedNumbers(admin_pb2.GetExcludedNumbersRequest(), metadata=reporter),
    ):
        error = await expect_status(call, CODE.PERMISSION_DENIED)
        assert error.details() == "this RPC needs a tenant API key with role ROLE_ADMIN"


async def list_contacts(
    channel: grpc.aio.Channel, metadata: Metadata, page_size: int, **kw: Any
) -> list[admin_pb2.StoredContact]:
    return await every_page(channel, metadata, "ListContacts", page_size, **kw)


async def test_list_contacts_newest_versions_without_deleted(channel: grpc.aio.Channel) -> None:
    tenant = await new_tenant(channel)
    asha = await new_employee(channel, tenant, "Asha", "+919800000031")
    ravi = await new_employee(channel, tenant, "Ravi", "+919800000032")
    devices = {
        asha: await enroll(channel, tenant, asha),
        ravi: await enroll(channel, tenant, ravi),
    }

    def contact(i: int, version: int, name: str, deleted: bool = False) -> ingest_pb2.Contact:
        return ingest_pb2.Contact(
            contact_id=f"c{i:02d}",
            name=name,
            numbers=[f"09311{i:06d}", f"+91 9322{i:06d}"],
            updated_at_ms=version,
            deleted=deleted,
        )

    await upload(
        channel,
        devices[asha].device_token,
        1,
        contacts=ingest_pb2.ContactBatch(records=[contact(i, 100, f"A{i}") for i in range(11)]),
    )
    await upload(
        channel,
        devices[ravi].device_token,
        1,
        contacts=ingest_pb2.ContactBatch(records=[contact(i, 100, f"R{i}") for i in range(4)]),
    )
    # Newer versions, in another insert: c03 renamed, c05 deleted on Asha's phone.
    await upload(
        channel,
        devices[asha].device_token,
        2,
        contacts=ingest_pb2.ContactBatch(
            records=[contact(3, 200, "A3 renamed"), contact(5, 200, "A5", deleted=True)]
        ),
    )

    every = await list_contacts(channel, tenant.admin, 4)
    expected = sorted(
        [(devices[asha].device_id, asha, f"c{i:02d}") for i in range(11) if i != 5]
        + [(devices[ravi].device_id, ravi, f"c{i:02d}") for i in range(4)]
    )
    assert [(c.device_id, c.employee_id, c.contact_id) for c in every] == expected
    assert [c.contact_id for c in await list_contacts(channel, tenant.admin, 0)] == [
        c.contact_id for c in every
    ]
    renamed = next(
        c for c in every if c.device_id == devices[asha].device_id and c.contact_id == "c03"
    )
    assert (renamed.name, list(renamed.numbers), renamed.updated_at_ms) == (
        "A3 renamed",
        ["+919311000003", "+919322000003"],
        200,
    )
    assert {c.name for c in every if c.employee_id == ravi} == {"R0", "R1", "R2", "R3"}

    ravis = await list_contacts(channel, tenant.admin, 3, employee_ids=[ravi])
    assert [(c.employee_id, c.contact_id) for c in ravis] == [(ravi, f"c{i:02d}") for i in range(4)]
    assert await list_contacts(channel, tenant.admin, 3, employee_ids=["nobody"]) == []

    other = await new_tenant(channel)
    assert await list_contacts(channel, other.admin, 10) == []
    # Another tenant naming this tenant's employee gets nothing either.
    assert await list_contacts(channel, other.admin, 10, employee_ids=[asha]) == []
