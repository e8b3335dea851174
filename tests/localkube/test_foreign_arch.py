"""arm64 and armv7 pods on the x86-64 node: single-platform images, run by containerd
through qemu-user registered in binfmt_misc with the fix-binary flag (by up)."""

import json
import urllib.request

import pytest

import localkube

pytestmark = pytest.mark.kube


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("arm64", "GOARCH=arm64 machine=aarch64"), ("armv7", "GOARCH=arm GOARM=7 machine=armv7l")],
)
def test_a_single_platform_foreign_image_runs_as_a_pod(kube_namespace, platform, expected):
    missing = localkube.foreign_arch_missing(platform)
    if missing:
        pytest.skip(f"no {platform} emulation on this machine: {missing}")
    image = localkube.push_arch_image(platform)
    request = urllib.request.Request(
        f"http://{localkube.REGISTRY_LISTEN}/v2/localkube/arch/manifests/{platform}",
        headers={"Accept": f"{localkube.OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"},
    )
    manifest = json.loads(localkube.DIRECT.open(request, timeout=10).read())
    assert manifest["mediaType"] == localkube.OCI_MANIFEST  # one manifest, no index
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "arch"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "arch", "image": image, "imagePullPolicy": "Always"}],
        },
    }
    kube_namespace.apply(pod)
    phase = localkube.wait_for(
        f"the {platform} pod to finish",
        120,
        lambda: (
            kube_namespace.kubectl("get", "pod", "arch", "-o", "jsonpath={.status.phase}").stdout
            in ("Succeeded", "Failed")
            and kube_namespace.kubectl(
                "get", "pod", "arch", "-o", "jsonpath={.status.phase}"
            ).stdout
        ),
    )
    logs = kube_namespace.kubectl("logs", "arch").stdout
    print(f"{platform}: {phase}: {logs.strip()}")
    assert phase == "Succeeded", logs
    assert logs.strip() == expected
    code = kube_namespace.kubectl(
        "get", "pod", "arch", "-o",
        "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
    ).stdout  # fmt: skip
    assert code == "0"


def test_binfmt_status_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(localkube, "BINFMT", tmp_path)
    assert "not mounted" in localkube.foreign_arch_missing("arm64")
    (tmp_path / "register").write_text("")
    assert "no binfmt_misc entry qemu-aarch64" in localkube.foreign_arch_missing("arm64")
    (tmp_path / "qemu-aarch64").write_text(
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: P\noffset 0\n"
        "magic 7f454c46\nmask ffffffff\n"
    )
    assert "fix-binary" in localkube.foreign_arch_missing("arm64")


def test_a_saved_binfmt_entry_becomes_the_line_that_registers_it_again():
    text = (
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: POC\noffset 0\n"
        "magic 7f454c4601\nmask ffffff00fe\n"
    )
    assert localkube.binfmt_register_line(text, "qemu-arm") == (
        ":qemu-arm:M:0:\\x7f\\x45\\x4c\\x46\\x01:\\xff\\xff\\xff\\x00\\xfe:"
        "/usr/libexec/qemu-binfmt/arm-binfmt-P:POC"
    )
