"""The self-contained demo (``pgproxy demo``) and the throw-away PostgreSQL it runs.

``embedded`` starts a real server from local binaries (the demo, the test
suite and the benchmarks use it); ``scenario`` is the demo's ORM scenario and
command. Nothing here is imported by the proxy itself.
"""
