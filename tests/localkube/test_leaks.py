"""Nothing for the Service or pod CIDR left the node through a default interface
since `localkube up`: the counters of localkube's nftables table, read at the end of
the whole test run (tools/test.sh runs this right after pytest, before the down check).
"""

import os

import pytest

import localkube

pytestmark = [
    pytest.mark.kube,
    pytest.mark.localkube_leaks,
    pytest.mark.skipif(
        os.environ.get("LOCALKUBE_RUN_LEAK_CHECK") != "1",
        reason="reads counters of the whole run; tools/test.sh runs it last with LOCALKUBE_RUN_LEAK_CHECK=1",
    ),
]


def test_no_packet_for_the_cluster_cidrs_left_through_a_default_interface(localkube_cluster):
    counters = localkube.leak_counters()
    for name, c in counters.items():
        print(
            f"{name}: {c['packets']} packets, {c['bytes']} bytes to {c['cidr']} "
            f"out of {', '.join(c['interfaces'])}"
        )
    assert set(counters) == set(localkube.LEAK_COUNTERS)
    assert counters["leak-service-cidr"]["interfaces"], "no default interface was watched"
    assert all(c["packets"] == 0 for c in counters.values()), counters
