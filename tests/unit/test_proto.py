"""The committed stubs are exactly what ``make proto`` generates, and the contract's names hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from callsight.v1 import admin_pb2, common_pb2, ingest_pb2, report_pb2

GENERATE = Path(__file__).resolve().parents[2] / "proto" / "generate.py"


def test_committed_stubs_are_fresh() -> None:
    # proto/ is a folder of sources and one script, not an importable package: load it by path.
    spec = importlib.util.spec_from_file_location("proto_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.stale_stubs() == []


def test_enum_values_follow_the_spec() -> None:
    assert common_pb2.CALL_TYPE_INCOMING == 1
    assert common_pb2.CALL_TYPE_ANSWERED_EXTERNALLY == 7
    assert common_pb2.ROLE_REPORTS == 2
    assert ingest_pb2.UPLOAD_RESULT_ACCEPTED == 1


def test_every_spec_rpc_exists() -> None:
    services = {
        admin_pb2: (
            "AdminService",
            "CreateTenant CreateApiKey CreateEmployee ListEmployees "
            "CreateEnrollment RevokeDevice SetExcludedNumbers ImportLeads EraseNumber",
        ),
        ingest_pb2: ("IngestService", "RegisterDevice"),
        report_pb2: (
            "ReportService",
            "CallSummary EmployeeSummary CallAnalysis NeverAttended "
            "NotPickedByClient UniqueClients HourlyAnalytics DaywiseAnalytics "
            "WorkingHours CallHistory LeadActivity",
        ),
    }
    for module, (service, rpcs) in services.items():
        methods = module.DESCRIPTOR.services_by_name[service].methods_by_name
        for rpc in rpcs.split():
            method = methods[rpc]
            assert method.input_type.name == f"{rpc}Request"
            assert method.output_type.name == f"{rpc}Response"


def test_stream_and_upload_carry_upload_request_and_ack() -> None:
    methods = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].methods_by_name
    for rpc, streaming in (("Stream", True), ("Upload", False)):
        assert methods[rpc].input_type.name == "UploadRequest"
        assert methods[rpc].output_type.name == "UploadAck"
        assert methods[rpc].client_streaming is streaming
        assert methods[rpc].server_streaming is streaming


def test_durable_erasure_is_an_additive_change() -> None:
    methods = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name
    assert methods["LiftErasure"].input_type.name == "LiftErasureRequest"
    assert methods["LiftErasure"].output_type.name == "LiftErasureResponse"
    # A new field number: old agents ignore it, and duplicates still count the erased records.
    assert ingest_pb2.UploadAck.DESCRIPTOR.fields_by_name["erased"].number == 10
