"""AdminService device policy (issue 12): SetDevicePolicy, GetDevicePolicy."""

from __future__ import annotations


class PolicyAdmin:
    """Mixed into the service's servicer; its RPCs answer UNIMPLEMENTED until defined here."""
