"""A Python client of cleanroom's querying side (cardinality and intersection-sum), written
from PROTOCOL.md: ristretto255 through libsodium (ctypes), gRPC through grpcio.

- ``psi``: normalization, hash to group, tags, ElGamal, the message format, the receiver role;
- ``plan``: a plan's receiver table from a CSV file, and result rows from the outcome;
- ``session``: one ``RunSession`` call against ``cleanroom serve``, and ``PlanQuery`` for a
  query's plan;
- ``cleanroom-client`` (``python -m cleanroom_client``): the command line.
"""
