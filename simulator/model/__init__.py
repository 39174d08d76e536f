"""The factory model: sites, lines and machines on a simulated clock (pure code, no I/O)."""

from simulator.model.site import (
    MachineSpec,
    MachineView,
    Message,
    SiteModel,
    build_machine_specs,
    unknown_scheduled_machines,
)

__all__ = [
    "MachineSpec",
    "MachineView",
    "Message",
    "SiteModel",
    "build_machine_specs",
    "unknown_scheduled_machines",
]
