"""`localkube down` leaves the machine as it was before `localkube up`.

It takes the shared cluster down, so it runs alone, after every other test
(tools/localkube/ci.sh does that): LOCALKUBE_RUN_DOWN_TEST=1 pytest -m localkube_down.
"""

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import localkube

pytestmark = [
    pytest.mark.kube,
    pytest.mark.localkube_down,
    pytest.mark.skipif(
        os.environ.get("LOCALKUBE_RUN_DOWN_TEST") != "1",
        reason="takes the shared cluster down; run alone with LOCALKUBE_RUN_DOWN_TEST=1",
    ),
]

OUR_EXECUTABLES = (
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
    "/usr/bin/docker-registry",
)


def sh(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def optional(*cmd) -> str:
    """The output of a command that up installs (nft, ipset): empty before it is there."""
    try:
        return sh(*cmd)
    except FileNotFoundError:
        return ""


def link_name_and_master(line: str) -> str:
    """'5: veth1@if4: <...> ... master localkube-br0 state UP ...' -> 'veth1@if4 master localkube-br0'."""
    name = line.split(": ")[1]
    master = re.search(r" master (\S+)", line)
    return name + (f" master {master.group(1)}" if master else "")


FIXED_PORTS = {2379, 2380, 2381, 5000, 6443, 10248, 10249, 10250, 10256, 10257, 10259, 18080}


def localkube_port(sock: str) -> bool:
    port = int(sock.rsplit(":", 1)[1])
    return port in FIXED_PORTS or 30000 <= port <= 32767 or localkube.NODE_IP in sock


def snapshot() -> dict[str, Counter]:
    """What up may change on the machine, each as a multiset of lines."""
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if exe.startswith(str(localkube.CACHE_ROOT)) or exe in OUR_EXECUTABLES:
            procs.append(f"{exe}: {cmd}")
    cgroup_procs = []
    for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
        cgroup_procs += [str(p) for p in top.rglob("cgroup.procs")]
    binfmt = []
    for entry in sorted(Path("/proc/sys/fs/binfmt_misc").glob("*")):
        if entry.name not in ("register", "status"):
            binfmt.append(f"{entry.name}: " + " ".join(entry.read_text().split()))
    iptables = []
    for tool in ("iptables-save", "ip6tables-save"):
        for line in sh(tool).splitlines():
            if not line.startswith("#"):
                iptables.append(f"{tool}: " + re.sub(r"\[\d+:\d+\]", "", line))
    return {
        "processes": Counter(procs),
        "processes in kubepods cgroups": Counter(cgroup_procs),
        "cgroups": Counter(str(p) for p in Path("/sys/fs/cgroup").glob("*/*") if p.is_dir()),
        "mounts": Counter(
            " ".join(line.split()[3:5]) + " " + line.split(" - ")[1].split()[0]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
        ),
        "links": Counter(
            link_name_and_master(line) for line in sh("ip", "-o", "link", "show").splitlines()
        ),
        "addresses": Counter(
            " ".join(line.split()[1:4]) for line in sh("ip", "-o", "addr", "show").splitlines()
        ),
        "routes": Counter(sh("ip", "route", "show", "table", "all").splitlines()),
        "iptables": Counter(iptables),
        # the fixed ports of localkube's components, hostPorts and NodePorts; sockets on
        # random ports would be held by a process, which "processes" covers
        "listening sockets": Counter(
            sock
            for sock in (
                " ".join(line.split()[:1] + line.split()[4:5])
                for line in sh("ss", "-Hltnu").splitlines()
            )
            if localkube_port(sock)
        ),
        "sysctls": Counter(f"{k}={localkube.read_sysctl(k)}" for k in localkube.SYSCTLS),
        "paths": Counter(
            f"{p} exists={Path(p).exists()}"
            for p in [str(localkube.STATE), str(localkube.RUN), *localkube.FOREIGN_DIRS]
        ),
        "network namespaces": Counter(
            os.listdir("/run/netns") if Path("/run/netns").exists() else []
        ),
        "nft tables": Counter(optional("nft", "list", "tables").splitlines()),
        "ipsets": Counter(optional("ipset", "list", "-n").splitlines()),
        "qdiscs": Counter(sh("tc", "qdisc", "show").splitlines()),
        "binfmt": Counter(binfmt),
    }


# Docker may run on the same machine (CI images have it; other jobs use it), and
# its containers come and go while this test runs. What names it is not ours.
DOCKER = re.compile(r"docker|moby|DOCKER|\bbr-[0-9a-f]{12}\b")


def foreign_interfaces(*snapshots) -> set[str]:
    """Docker's bridges and the veths attached to them."""
    names = set()
    for snap in snapshots:
        for line in snap["links"]:
            name, _, master = line.partition(" master ")
            if DOCKER.search(name) or DOCKER.search(master):
                names.add(name.split("@")[0])
    return names


def difference(
    before: dict[str, Counter], after: dict[str, Counter]
) -> dict[str, dict[str, list[str]]]:
    foreign = foreign_interfaces(before, after)

    def ours(line: str) -> bool:
        return not DOCKER.search(line) and not any(
            re.search(rf"\b{re.escape(n)}\b", line) for n in foreign
        )

    diff = {}
    for key in before:
        added = Counter({k: v for k, v in (after[key] - before[key]).items() if ours(k)})
        removed = Counter({k: v for k, v in (before[key] - after[key]).items() if ours(k)})
        if added or removed:
            diff[key] = {
                "left behind": sorted(added.elements()),
                "gone": sorted(removed.elements()),
            }
    return diff


def workload(image: str) -> dict:
    """A pod with a hostPort (portmap rules) behind a NodePort Service (kube-proxy rules),
    under a NetworkPolicy (kube-router's rules and ipsets)."""
    labels = {"app": "down-test"}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "down-test", "namespace": "default"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [
                                {
                                    "name": "probe",
                                    "image": image,
                                    "args": ["serve", ":8080"],
                                    "ports": [{"containerPort": 8080, "hostPort": 18080}],
                                }
                            ]
                        },
                    },
                },
            },
            {  # kube-router's chains and ipsets
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "down-test", "namespace": "default"},
                "spec": {
                    "podSelector": {"matchLabels": labels},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": labels}}]}],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "down-test", "namespace": "default"},
                "spec": {
                    "type": "NodePort",
                    "selector": labels,
                    "ports": [{"port": 80, "targetPort": 8080}],
                },
            },
        ],
    }


def test_down_leaves_the_machine_as_it_was_before_up():
    was_up = localkube.is_up()
    if was_up or localkube.STATE.exists():
        localkube.down()
    # As on a fresh machine, /run/netns is no mount point yet: the shaped link's `ip netns
    # add` below, while pods run, would make it one over their namespaces (a cold CI run's
    # down failed so, EBUSY) unless up made it first.
    points = localkube.mounts()
    if "/run/netns" in points and not any(m.startswith("/run/netns/") for m in points):
        sh("umount", "/run/netns")
    before = snapshot()
    localkube.up(audit=False)
    try:
        assert localkube.is_up()
        # `up --audit` on a running cluster without the audit log restarts just the API server
        pids = {name: localkube.pid_of(name) for name in localkube.COMPONENTS}
        assert not localkube.apiserver_audits()
        localkube.up(audit=True)
        assert localkube.apiserver_audits() and localkube.AUDIT_LOG.exists()
        changed_pids = {n for n in localkube.COMPONENTS if localkube.pid_of(n) != pids[n]}
        assert changed_pids == {"kube-apiserver"}, changed_pids
        image = localkube.push_probe_image("down-test")
        localkube.kubectl("apply", "-f", "-", input=json.dumps(workload(image)))
        localkube.kubectl(
            "rollout", "status", "deployment/down-test", "--timeout=120s", timeout=150
        )
        localkube.shaped_registry_up(rate="100mbit", delay="5ms")
        localkube.wait_for(
            "kube-router's ipsets for the policy",
            30,
            lambda: any(n.startswith("KUBE-") for n in optional("ipset", "list", "-n").split()),
        )
        during = snapshot()
        # the check can fail: up did change every kind of thing compared
        changed = difference(before, during)
        for key in (
            "processes",
            "processes in kubepods cgroups",
            "cgroups",
            "mounts",
            "links",
            "addresses",
            "routes",
            "iptables",
            "listening sockets",
            "paths",
            "network namespaces",
            "nft tables",
            "ipsets",
            "qdiscs",
        ):
            assert key in changed, f"up did not change {key}; the snapshot misses it"
    finally:
        localkube.down()
    after = snapshot()
    diff = difference(before, after)
    left_behind = {key: d["left behind"] for key, d in diff.items() if d["left behind"]}
    assert not left_behind, "down left behind:\n" + json.dumps(left_behind, indent=1)
    # Other programs (a Docker daemon, say) may stop things meanwhile, so what is gone
    # is only asserted for what no one else touches.
    gone = {key: d["gone"] for key, d in diff.items() if d["gone"]}
    assert not {k: v for k, v in gone.items() if k in ("sysctls", "paths", "binfmt")}, json.dumps(
        gone, indent=1
    )
    if gone:
        print(
            "gone meanwhile (not by localkube, as nothing was left behind):\n"
            + json.dumps(gone, indent=1)
        )
    if was_up:
        localkube.up()
