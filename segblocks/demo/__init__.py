"""``segblocks demo``: a local click-to-segment web page (see :mod:`segblocks.demo.app`).

Nothing in the library imports this package; it imports models and the interactive protocol.
"""
