"""gw: a user-space VPN gateway."""

__version__ = "0.1.0"
