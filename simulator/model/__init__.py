"""The factory model: sites, lines and machines on a simulated clock (pure code, no I/O)."""

from simulator.model.site import MachineSpec, MachineView, Message, SiteModel, build_machine_specs

__all__ = ["MachineSpec", "MachineView", "Message", "SiteModel", "build_machine_specs"]
