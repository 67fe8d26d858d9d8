"""The tunnel: its wire format and handshake as sans-I/O cores (``wire``, ``handshake``), and the asyncio
endpoints that move their bytes over TLS."""
