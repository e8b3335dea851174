"""localkube's failures say what failed and where to look."""

import pytest
import pytest_localkube

import localkube


def test_a_wait_that_runs_out_names_what_it_waited_for_the_last_check_and_the_hint():
    def probe():
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(localkube.LocalkubeError) as failure:
        localkube.wait_for("the thing", 1, probe, hint=lambda: "see thing.log", interval=0.1)
    message = str(failure.value)
    assert "the thing: not ready after 1s" in message
    assert "ConnectionRefusedError: nothing listens" in message
    assert message.endswith("see thing.log")


def test_up_refuses_an_address_plan_that_overlaps_the_machines_networks(monkeypatch):
    routes = [
        line.split()[0]
        for line in localkube.run(
            ["ip", "-4", "-o", "route", "show", "scope", "link"]
        ).stdout.splitlines()
        if "localkube" not in line
    ]
    assert routes, (
        "the machine has no directly connected IPv4 network (besides localkube's) to overlap"
    )
    monkeypatch.setattr(localkube, "POD_CIDR", routes[0])
    with pytest.raises(localkube.LocalkubeError, match=f"overlaps localkube's {routes[0]}"):
        localkube.check_address_plan()


def test_a_failed_command_reports_its_exit_code_and_output():
    with pytest.raises(localkube.LocalkubeError, match=r"exit code 3:\nboom"):
        localkube.run(["sh", "-c", "echo boom; exit 3"])


@pytest.mark.kube
def test_failure_artifacts_hold_component_logs_and_the_namespace_events_and_pod_logs(
    kube_namespace, probe_image, tmp_path
):
    kube_namespace.kubectl("run", "talker", f"--image={probe_image}", "--", "serve", ":8080")
    kube_namespace.kubectl(
        "wait", "--for=condition=Ready", "pod/talker", "--timeout=60s", timeout=90
    )
    out = pytest_localkube.dump_artifacts("tests/x.py::test_y", kube_namespace.name, root=tmp_path)
    for component in localkube.COMPONENTS:
        assert (out / f"{component}.log").stat().st_size > 0, component
    assert "Scheduled" in (out / "events.txt").read_text()
    assert "probe serving on :8080" in (out / "talker.log").read_text()
    assert "talker" in (out / "describe.txt").read_text()


@pytest.mark.kube
def test_up_refuses_ports_that_are_taken(localkube_cluster):
    # the running cluster holds them all
    with pytest.raises(
        localkube.LocalkubeError, match=r"port 127\.0\.0\.1:2379, which localkube needs, is taken"
    ):
        localkube.check_ports_free()
