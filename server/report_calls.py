"""ReportService.GetCalls: calls by their ids (issue 12)."""

from __future__ import annotations


class CallsReport:
    """Mixed into the service's servicer; its RPCs answer UNIMPLEMENTED until defined here."""
