"""`minimaldask manifests` prints what `up` applies: checked offline."""

from __future__ import annotations

import shlex

import pytest
import yaml

from minimaldask.cli import main


def manifests(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        main(["manifests", *args])
    assert exit_.value.code == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_manifests_print_the_objects_identities_first(capsys):
    objs = manifests(capsys, "etl", "-n", "team", "--workers", "4", "--cpu", "2", "--memory", "3Gi")
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("ConfigMap", "etl-cluster"),
        ("ServiceAccount", "etl-scheduler"),
        ("Role", "etl-janitor"),
        ("RoleBinding", "etl-janitor"),
        ("Secret", "etl-tls"),
        ("NetworkPolicy", "etl-network"),
        ("Deployment", "etl-scheduler"),
        ("Service", "etl-scheduler"),
        ("Deployment", "etl-worker"),
    ]
    assert all(o["metadata"]["namespace"] == "team" for o in objs)
    assert objs[3]["subjects"] == [
        {"kind": "ServiceAccount", "name": "etl-scheduler", "namespace": "team"}
    ]
    (worker,) = [o for o in objs if o["metadata"]["name"] == "etl-worker"]
    assert worker["spec"]["replicas"] == 4
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "3Gi"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = shlex.split(env["ARGUMENTS"])
    assert args[args.index("--nthreads") + 1] == "2"


def test_manifests_options(capsys):
    objs = manifests(
        capsys, "x", "--image", "reg/img:1", "--pip", "a b", "--env", "A=1", "--expose", "nodeport"
    )
    by_kind = {o["kind"]: o for o in objs if o["metadata"]["name"] != "x-worker"}
    assert by_kind["Service"]["spec"]["type"] == "NodePort"
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/img:1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EXTRA_PIP_PACKAGES"] == "a b" and env["A"] == "1"


def test_a_bad_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["manifests", "Bad_Name"])
    assert exit_.value.code == 1
    assert "invalid name='Bad_Name'" in capsys.readouterr().out
