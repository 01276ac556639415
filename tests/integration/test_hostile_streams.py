"""Hostile streams against a real server (hypothesis): random bytes, truncated batches, extreme
values, odd unicode and duplicate ids, mixed with valid uploads on one stream.

Every message gets exactly one ack, in order; the stream and the server keep going; and the
calls stored for the device are exactly the records the acks accepted, never half a batch.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callsight.storage.database import Database
from callsight.v1 import ingest_pb2
from tests.integration.calls import stored_calls
from tests.integration.helpers import auth, enroll, new_employee, new_tenant
from tests.unit.test_decode_properties import uploads


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A message as it goes on the wire: a batch, a truncated batch, or random bytes."""
    way = draw(st.sampled_from(["batch", "truncated", "random"]))
    if way == "random":
        return draw(st.binary(max_size=300))
    wire = draw(uploads()).SerializeToString()
    return wire if way == "batch" else wire[: draw(st.integers(0, len(wire)))]


def accepted_call_ids(wire: bytes, ack: ingest_pb2.UploadAck) -> set[str]:
    """The call ids an ack says were stored (records not listed among its errors)."""
    if ack.result != ingest_pb2.UPLOAD_RESULT_ACCEPTED:
        return set()
    request = ingest_pb2.UploadRequest.FromString(wire)
    if request.WhichOneof("payload") != "calls":
        return set()
    rejected = {e.index for e in ack.errors}
    return {r.call_id for i, r in enumerate(request.calls.records) if i not in rejected}


def parses(wire: bytes) -> bool:
    try:
        ingest_pb2.UploadRequest.FromString(wire)
    except DecodeError:
        return False
    return True


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(payloads(), min_size=1, max_size=8))
async def test_hostile_streams_store_exactly_what_was_acked(
    channel: grpc.aio.Channel, db: Database, messages: list[bytes]
) -> None:
    tenant = await new_tenant(channel)
    employee = await new_employee(channel, tenant, "Asha", f"98{secrets.randbelow(10**8):08d}")
    device = await enroll(channel, tenant, employee)
    stream = channel.stream_stream(
        "/callsight.v1.IngestService/Stream",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.UploadAck.FromString,
    )

    async def send() -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    acks = [a async for a in stream(send(), metadata=auth(device.device_token))]
    assert len(acks) == len(messages)  # one ack each, and the stream ended OK
    expected: set[str] = set()
    for wire, ack in zip(messages, acks, strict=True):
        if not parses(wire):
            assert ack.result == ingest_pb2.UPLOAD_RESULT_REJECTED
            continue
        request = ingest_pb2.UploadRequest.FromString(wire)
        assert ack.seq == request.seq
        if ack.result == ingest_pb2.UPLOAD_RESULT_ACCEPTED:
            counted = ack.accepted + ack.updated + ack.duplicates + ack.rejected
            records = getattr(request, request.WhichOneof("payload") or "calls").records
            assert counted == len(records)
        else:
            assert ack.errors and ack.errors[0].reason
        expected |= accepted_call_ids(wire, ack)
    stored = {call_id for (_, call_id) in await stored_calls(db, tenant.tenant_id)}
    assert stored == expected
