"""Offline decoding (``pgproxy decode``): captures in, the tracker's records out.

``capture`` reads hex dumps and captured frames into TCP streams; ``decode``
runs each stream through the same tracker the proxy uses.
"""
