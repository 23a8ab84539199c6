"""meshcli: a service mesh for Docker Compose."""

__version__ = "0.1.0"
