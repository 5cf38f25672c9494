"""Prometheus exporter for the causes of Exchange server-to-server Kerberos failures."""

__version__ = "0.1.0"
