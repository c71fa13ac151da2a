"""Footprint: energy and CO2e of the workloads on a Kubernetes node, for Prometheus."""

__version__ = "0.5.0"
