import time

from minimaldask import ClusterSpec
from minimaldask.kubernetes.manifests import scheduler_deployment
from minimaldask.pod.plugin import Plugin, Usage


def janitor_env(spec):
    """The janitor's variables in the scheduler Deployment made for ``spec``."""
    container = scheduler_deployment(spec)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return {
        k: v
        for k, v in env.items()
        if k.startswith("MINIMALDASK_") and v is not None and k != "MINIMALDASK_TLS_DIR"
    }


def test_janitor_env_carries_the_timeouts_of_the_spec():
    spec = ClusterSpec.from_options(
        name="c1", idle_timeout="2 minutes", no_client_timeout=None, max_lifetime="1h"
    )
    assert janitor_env(spec) == {
        "MINIMALDASK_CLUSTER_NAME": "c1",
        "MINIMALDASK_IDLE_TIMEOUT": "120",
        "MINIMALDASK_NO_CLIENT_TIMEOUT": "",
        "MINIMALDASK_MAX_LIFETIME": "3600",
        "MINIMALDASK_JANITOR_PORT": "8789",
    }


def test_janitor_reads_its_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("MINIMALDASK_IDLE_TIMEOUT", "120")
    monkeypatch.setenv("MINIMALDASK_NO_CLIENT_TIMEOUT", "")
    monkeypatch.setenv("MINIMALDASK_MAX_LIFETIME", "3600")
    monkeypatch.setenv("MINIMALDASK_CLUSTER_NAME", "c1")
    monkeypatch.delenv("MINIMALDASK_NAMESPACE", raising=False)
    monkeypatch.delenv("MINIMALDASK_JANITOR_PORT", raising=False)
    p = Plugin.from_environment()
    s = p.settings
    assert (s.idle_timeout, s.no_client_timeout, s.max_lifetime) == (120, None, 3600)
    assert s.cluster == "c1"
    assert p.local and p.link is None  # not in a pod: it ends the cluster by closing the scheduler


def test_usage_integrates_worker_and_core_seconds():
    usage = Usage(started=time.time() - 10)
    usage.add("w1", 2)
    usage.add("w2", 4)
    usage.running["w1"] = (time.time() - 5, 2)
    usage.running["w2"] = (time.time() - 3, 4)
    usage.remove("w1")
    report = usage.report()
    assert report["peak_workers"] == 2
    assert report["workers"] == 1
    assert abs(report["worker_seconds"] - 8) < 0.5
    assert abs(report["core_seconds"] - (5 * 2 + 3 * 4)) < 1
    assert report["lifetime"] >= 10


def test_python_patch_levels_alone_are_not_a_mismatch():
    from distributed import versions

    from minimaldask.pod.plugin import quiet_patch_levels

    def table(python):
        return {"host": {}, "packages": {"python": python, "dask": "2026.8.0"}}

    original = versions.error_message
    try:
        quiet_patch_levels()
        quiet_patch_levels()  # once is enough, twice is harmless
        same_minor = versions.error_message(
            table("3.11.2.final.0"), {"w": table("3.11.2.final.0")}, table("3.11.7.final.0")
        )
        assert same_minor["warning"] == ""
        other_minor = versions.error_message(
            table("3.11.2.final.0"), {"w": table("3.11.2.final.0")}, table("3.12.1.final.0")
        )
        assert "Mismatched versions" in other_minor["warning"]
    finally:
        versions.error_message = original
