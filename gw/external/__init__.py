"""External gateways: how translated packets leave for the internet and how the answers come back.

Every external gateway has the same small interface (``ExternalGateway`` in ``base.py``): ``start``,
``send_outbound`` for a packet the NAT translated, ``mapping_ended`` when the NAT ends a mapping,
``tick`` from the daemon's timer, and ``stop``; what comes back from the internet goes to the
``on_packet`` callback as an IPv4 packet addressed to a public endpoint, for ``Nat.translate_inbound``.

- ``raw.py``: whole IPv4 packets through an ``AF_PACKET`` socket on the external interface, for public
  addresses the kernel does not own; the gateway is its own host on the link (``link.py``: ARP, the
  next hop, the kernel filter). TCP, UDP, ICMP and fragments; super-packets both ways.
- ``socket.py``: kernel sockets, one per mapping, on a public address the kernel owns (a typical VPS).
  The kernel picks each mapping's external port; ICMP errors the kernel learns (``IP_RECVERR``) are
  rebuilt as the packets the offender sent (``icmp_errors.py``). UDP and ICMP echo; TCP needs
  user-space termination (a later step): until then a client's SYN gets an immediate RST.
"""
