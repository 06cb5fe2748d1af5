"""Run OpenMined PSI's cardinality protocol (ECDH over P-256) on N elements per party.

Same shape as `cleanroom bench`: N identifiers per party, a fraction OVERLAP in common. Prints one
JSON object with wall seconds, CPU seconds and the intersection size (checked). Run it through
benches/peers.sh, which installs `openmined-psi` into a temporary virtual environment.
"""
import json
import sys
import time

import private_set_intersection.python as psi


def main() -> None:
    n = int(sys.argv[1])
    overlap = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    common = round(overlap * n)
    server_items = [f"user{i:010d}@example.com" for i in range(n)]
    client_items = [f"user{i:010d}@example.com" for i in range(n - common, 2 * n - common)]

    wall, cpu = time.perf_counter(), time.process_time()
    server = psi.server.CreateWithNewKey(False)
    client = psi.client.CreateWithNewKey(False)
    setup = server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.RAW)
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    size = client.GetIntersectionSize(setup, response)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    assert size == common, f"wrong intersection size {size}, expected {common}"
    wire = len(setup.SerializeToString()) + len(request.SerializeToString()) + len(response.SerializeToString())
    print(json.dumps({
        "peer": "openmined-psi",
        "version": "2.0.6",
        "size": n,
        "seconds": wall,
        "cpu_seconds": cpu,
        "intersection_size": size,
        "bytes_on_wire": wire,
    }))


if __name__ == "__main__":
    main()
