# cython: language_level=3
"""Compiled ``Mapping`` and ``TcpMapping``: the classes of ``gw.mapping`` as extension types, untracked by
the cyclic garbage collector.

A mapping refers only to ints, a set of ints and None, so it can never be part of a reference cycle;
as a plain ``__slots__`` class it is tracked all the same, and every full collection walks the whole
table (measured: a sixth of the cost of a new mapping at 200 k mappings). ``no_gc`` also saves the
16-byte GC header per mapping. Same fields, same constructor, same properties as the Python classes,
which stay the specification (``tests/unit/test_mapping.py`` holds the two to one behaviour).
"""

cimport cython


@cython.no_gc
cdef class Mapping:
    """One NAT mapping (see ``gw.mapping.Mapping``)."""

    cdef public object key, ext_key, session, remote, remotes, created, last_seen, state, out, inb

    def __init__(self, key, ext_key, session, remote, created, last_seen, state, out=0, inb=0):
        self.key = key
        self.ext_key = ext_key
        self.session = session
        self.remote = remote
        self.remotes = None
        self.created = created
        self.last_seen = last_seen
        self.state = state
        self.out = out
        self.inb = inb

    @property
    def proto(self):
        return self.key >> 48

    @property
    def int_addr(self):
        return self.key >> 16 & 0xFFFFFFFF

    @property
    def int_port(self):
        return self.key & 0xFFFF

    @property
    def ext_addr(self):
        return self.ext_key >> 16 & 0xFFFFFFFF

    @property
    def ext_port(self):
        return self.ext_key & 0xFFFF

    def remote_count(self):
        """How many remotes this mapping remembers for filtering."""
        return (self.remote > 0) + (0 if self.remotes is None else len(self.remotes))

    def __repr__(self):
        from gw.inet import ntoa

        return (
            f"<{type(self).__name__} {self.proto} {ntoa(self.int_addr)}:{self.int_port} -> "
            f"{ntoa(self.ext_addr)}:{self.ext_port} session={self.session}>"
        )


@cython.no_gc
cdef class TcpMapping(Mapping):
    """A TCP mapping (see ``gw.mapping.TcpMapping``)."""

    cdef public object ack, max_window

    def __init__(self, key, ext_key, session, remote, created, last_seen, state, out=0, inb=0):
        Mapping.__init__(self, key, ext_key, session, remote, created, last_seen, state, out, inb)
        self.ack = -1  # NO_ACK
        self.max_window = 0xFFFF
