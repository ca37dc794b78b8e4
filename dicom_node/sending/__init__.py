"""Sending to peers: the C-STORE SCU of results, with every answer classified (:mod:`.scu`), and
the C-ECHO test of a destination (:mod:`.echo`)."""
