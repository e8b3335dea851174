"""The registry behind a shaped link (`localkube.py shaped-registry up`), and removing
an image from the node so that the next pod pulls it again."""

import os
import re
import socket
import time

import pytest

import localkube

pytestmark = pytest.mark.kube


@pytest.fixture
def shaped(localkube_cluster):
    yield localkube.shaped_registry_up
    localkube.shaped_registry_down()
    assert not os.path.exists(f"/run/netns/{localkube.SHAPED_NETNS}")
    assert (
        localkube.run(["ip", "link", "show", localkube.SHAPED_HOST_IFACE], check=False).returncode
        != 0
    )


def push_sized_image(size: int) -> tuple[str, int]:
    """An image of the probe and `size` random (incompressible) bytes, under a new
    digest; return (reference, bytes of its blobs)."""
    files = {
        "probe": (localkube.bin_path("probe").read_bytes(), 0o755),
        "payload": (os.urandom(size), 0o644),
    }
    manifest, blobs = localkube.image_blobs(files, ["/probe"], ["serve", ":8080"])
    tag = os.urandom(4).hex()
    ref = localkube.push_image("localkube/sized", tag, files, ["/probe"], ["serve", ":8080"])
    return ref, len(manifest) + sum(len(b) for b in blobs.values())


def pod(name: str, image: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "c", "image": image, "args": ["serve", ":8080"]}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def pull_event(ns, pod_name: str, timeout: float = 180) -> str:
    """The kubelet's event on the pod's image: "Successfully pulled image ... in 4.2s ..."
    or "Container image ... already present on machine"."""

    def event():
        out = ns.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={pod_name}",
            "-o", "jsonpath={range .items[*]}{.reason}|{.message}{\"\\n\"}{end}",
        ).stdout  # fmt: skip
        for line in out.splitlines():
            reason, _, message = line.partition("|")
            if reason in ("Pulled", "Failed"):
                return message
        return None

    return localkube.wait_for(f"the image of pod {pod_name}", timeout, event)


def pulled_seconds(message: str) -> float:
    match = re.search(r"Successfully pulled image \S+ in ([\d.]+)(m?s) ", message)
    assert match, message
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def test_a_pull_over_the_shaped_link_takes_as_long_as_its_rate_says(shaped, kube_namespace):
    info = shaped(rate="20mbit", delay="40ms")
    assert info.pull_name == localkube.SHAPED_REGISTRY
    # the added delay: a TCP handshake with the registry takes a round trip
    connects = []
    for _ in range(5):
        start = time.monotonic()
        socket.create_connection((localkube.SHAPED_REGISTRY_IP, 5000), timeout=5).close()
        connects.append(time.monotonic() - start)
    print(f"connect to the shaped registry: {[f'{c * 1000:.1f}' for c in connects]} ms")
    assert min(connects) >= 0.9 * info.delay_s

    ref, size = push_sized_image(8 << 20)
    shaped_ref = info.reference(ref)
    assert shaped_ref.startswith(f"{localkube.SHAPED_REGISTRY}/localkube/sized:")
    kube_namespace.apply(pod("shaped", shaped_ref))
    message = pull_event(kube_namespace, "shaped")
    seconds = pulled_seconds(message)
    expected = size * 8 / info.rate_bits
    print(
        f"pulled {size / 1e6:.1f} MB through {info.rate_bits / 1e6:g} Mbit/s "
        f"+{info.delay_s * 1000:g} ms in {seconds:.2f} s; the rate alone: {expected:.2f} s; "
        f"ratio {seconds / expected:.2f}"
    )
    # Wide bounds: this checks that the link is shaped, not how fast anything is.
    assert 0.9 <= seconds / expected <= 3.0, message
    kube_namespace.kubectl(
        "wait", "--for=condition=Ready", "pod/shaped", "--timeout=60s", timeout=90
    )

    # the same size, unshaped, for comparison
    plain_ref, plain_size = push_sized_image(8 << 20)
    kube_namespace.apply(pod("plain", plain_ref))
    plain = pulled_seconds(pull_event(kube_namespace, "plain"))
    print(f"pulled {plain_size / 1e6:.1f} MB from localhost:5000 in {plain:.2f} s")
    assert plain < seconds


def test_remove_image_makes_the_next_pod_pull_again(localkube_cluster, kube_namespace):
    ref, _ = push_sized_image(1 << 20)
    kube_namespace.apply(pod("first", ref))
    assert pulled_seconds(pull_event(kube_namespace, "first")) >= 0
    kube_namespace.kubectl("delete", "pod", "first", "--wait=true", timeout=90)
    removed = localkube.remove_image(ref)
    print("removed:", removed)
    assert ref in removed and any("@sha256:" in name for name in removed)
    assert localkube.remove_image(ref) == []  # gone: nothing left to remove
    kube_namespace.apply(pod("second", ref))
    assert pulled_seconds(pull_event(kube_namespace, "second")) >= 0


def test_rates_and_delays_are_checked():
    assert localkube.parse_rate("100mbit") == 100_000_000
    assert localkube.parse_rate("512kbit") == 512_000
    assert localkube.parse_delay("20ms") == pytest.approx(0.02)
    assert localkube.parse_delay("0.5s") == pytest.approx(0.5)
    with pytest.raises(localkube.LocalkubeError, match="unit among bit, kbit, mbit, gbit"):
        localkube.parse_rate("100mbps")
    with pytest.raises(localkube.LocalkubeError, match="give milliseconds"):
        localkube.parse_delay("twenty")
