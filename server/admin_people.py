"""AdminService for employees and devices (issue 12): UpdateEmployee, ImportEmployees,
ListDevices, DeviceHealth.
"""

from __future__ import annotations


class PeopleAdmin:
    """Mixed into the service's servicer; its RPCs answer UNIMPLEMENTED until defined here."""
