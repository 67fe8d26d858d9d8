"""User-space TCP termination for socket mode (issue 14): the client's TCP ends here, its bytes go on
through a kernel TCP socket. ``segment`` reads and writes the segments, ``conn`` is one connection's
sans-I/O endpoint."""
