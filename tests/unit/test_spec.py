import os
import subprocess
import sys

import dask
import pytest

from minimaldask import ClusterSpec
from minimaldask.spec import Resources, default_image_tag, parse_quantity, split_packages


def test_defaults_come_from_the_shipped_config():
    spec = ClusterSpec.from_options()
    assert spec.name == "dask"
    assert spec.namespace == "default"
    assert spec.backend == "kubernetes"
    assert spec.workers == 2
    assert spec.image == f"minimaldask/minimaldask:{default_image_tag()}"
    assert spec.idle_timeout == 1800
    assert spec.no_client_timeout == 300
    assert spec.max_lifetime is None
    assert spec.startup_timeout == 120
    assert spec.resources.requests == {"cpu": "1", "memory": "2Gi"}
    assert spec.scheduler_resources.requests == {"cpu": "250m", "memory": "512Mi"}


def test_dask_config_set_overrides_defaults():
    with dask.config.set({"minimaldask.workers": 7, "minimaldask.idle-timeout": "90s"}):
        spec = ClusterSpec.from_options()
    assert spec.workers == 7
    assert spec.idle_timeout == 90


def test_environment_variables_override_defaults():
    code = (
        "from minimaldask import ClusterSpec; s = ClusterSpec.from_options(); "
        "print(s.workers, s.namespace, s.idle_timeout, s.image)"
    )
    env = {
        **os.environ,
        "DASK_MINIMALDASK__WORKERS": "5",
        "DASK_MINIMALDASK__NAMESPACE": "team-a",
        "DASK_MINIMALDASK__IDLE_TIMEOUT": "10 minutes",
        "DASK_MINIMALDASK__IMAGE__TAG": "custom",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["5", "team-a", "600.0", "minimaldask/minimaldask:custom"]


def test_arguments_override_config():
    with dask.config.set({"minimaldask.workers": 7}):
        assert ClusterSpec.from_options(workers=0).workers == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "My_Cluster"}, "invalid name='My_Cluster': expected a DNS-1123 label"),
        ({"name": "-x"}, "invalid name='-x': expected a DNS-1123 label"),
        ({"name": "a" * 54}, "54 characters is too long; at most 53 so that NAME-scheduler fits"),
        ({"namespace": "Team A"}, "invalid namespace='Team A'"),
        ({"workers": -1}, "invalid workers=-1: expected a whole number >= 0"),
        ({"workers": 2.5}, "invalid workers=2.5"),
        ({"workers": True}, "invalid workers=True"),
        ({"backend": "yarn"}, "invalid backend='yarn': expected one of 'kubernetes', 'local'"),
        (
            {"resources": {"memory": "4GB"}},
            "invalid resources['memory']='4GB': unknown suffix 'GB'",
        ),
        (
            {"resources": {"memory": "lots"}},
            "invalid resources['memory']='lots': expected a Kubernetes quantity",
        ),
        ({"resources": {"cpu": "-1"}}, "invalid resources['cpu']='-1'"),
        ({"resources": {"cpu": "1.5.2"}}, "invalid resources['cpu']='1.5.2'"),
        ({"scheduler_resources": {"cpu": "two"}}, "invalid scheduler_resources['cpu']='two'"),
        (
            {"resources": {"requests": {"memory": "8Gi"}, "limits": {"memory": "4Gi"}}},
            "the request exceeds the limit '4Gi'",
        ),
        ({"resources": "big"}, "invalid resources='big': expected a mapping"),
        ({"idle_timeout": "soon"}, "invalid idle_timeout='soon': expected a duration"),
        ({"startup_timeout": "off"}, "invalid startup_timeout='off': a timeout is required"),
        ({"port": 0}, "invalid port=0: expected a port number between 1 and 65535"),
        ({"expose": "ingress"}, "invalid expose='ingress': expected one of"),
        ({"env": {"1BAD": "x"}}, "invalid env='1BAD'"),
        ({"labels": {"team": "a b"}}, "invalid labels['team']='a b'"),
        ({"image": "has space:tag"}, "invalid image='has space:tag'"),
        ({"tolerations": [{"effect": "NoSchedule", "color": "red"}]}, "invalid tolerations="),
        (
            {"pip_packages": 42},
            "invalid pip_packages=42: expected a space-separated string or a list",
        ),
        ({"patch": {"pod": {}}}, "invalid patch="),
        ({"worker_options": "--nthreads '2"}, "could not split it like a shell would"),
    ],
)
def test_invalid_options_name_option_value_and_fix(options, message):
    with pytest.raises(ValueError) as info:
        ClusterSpec.from_options(**options)
    assert message in str(info.value)


def test_name_of_53_characters_is_accepted():
    assert ClusterSpec.from_options(name="a" * 53).name == "a" * 53


def test_seed_style_space_separated_strings_and_lists():
    spec = ClusterSpec.from_options(
        pip_packages="camelcase pymongo", apk_packages="apache2 php7-apache2"
    )
    assert spec.pip_packages == ("camelcase", "pymongo")
    assert spec.apk_packages == ("apache2", "php7-apache2")
    assert split_packages(["camelcase", "pymongo==4.6"], "p") == ("camelcase", "pymongo==4.6")
    assert split_packages("", "p") == ()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", 0.5),
        ("2", 2),
        ("1.5", 1.5),
        ("4Gi", 4 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1G", 1e9),
        ("1e3", 1000),
        (3, 3),
    ],
)
def test_parse_quantity(text, value):
    assert parse_quantity(text) == pytest.approx(value)


def test_resources_give_threads_and_memory_limit():
    spec = ClusterSpec.from_options(resources={"cpu": "2500m", "memory": "3Gi"})
    assert spec.nthreads == 3
    assert spec.memory_limit == 3 * 2**30
    assert spec.resources.to_kubernetes() == {
        "requests": {"cpu": "2500m", "memory": "3Gi"},
        "limits": {"memory": "3Gi"},
    }
    assert Resources.parse({"cpu": "250m"}, "r").nthreads == 1


def test_timeouts_accept_numbers_strings_and_off():
    spec = ClusterSpec.from_options(
        idle_timeout=90, no_client_timeout="2 minutes", max_lifetime="1h"
    )
    assert (spec.idle_timeout, spec.no_client_timeout, spec.max_lifetime) == (90, 120, 3600)
    spec = ClusterSpec.from_options(idle_timeout=None, no_client_timeout="off")
    assert spec.idle_timeout is None and spec.no_client_timeout is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"port": 9000, "dashboard_port": 9000},
            "invalid dashboard_port=9000: the scheduler's port is 9000 already",
        ),
        (
            {"resources": {"memory": "512m"}},
            "invalid resources['memory']='512m': expected at least 16Mi, e.g. '512Mi' or "
            "'4Gi'; did you mean '512Mi'? ('m' is a thousandth)",
        ),
        ({"resources": {"cpu": "0"}}, "invalid resources['cpu']='0': expected more than 0 cores"),
        (
            {"scheduler_resources": {"requests": {"cpu": "0m"}}},
            "invalid scheduler_resources['requests']['cpu']='0m': expected more than 0 cores",
        ),
        (
            {"workers": 201},
            "invalid workers=201: at most 200 (minimaldask.max-workers); to run more, raise it",
        ),
        (
            {"worker_options": "--nworkers 2"},
            "invalid worker_options='--nworkers 2': minimaldask sets --nworkers itself: "
            "minimaldask runs one worker per pod (or process): use workers=N",
        ),
        (
            {"worker_options": ["--name=w1"]},
            "invalid worker_options='--name=w1': minimaldask sets --name itself",
        ),
        (
            {"worker_options": "--dashboard-address :9999"},
            "minimaldask sets --dashboard-address itself",
        ),
        (
            {"scheduler_options": "--port 9000"},
            "invalid scheduler_options='--port 9000': minimaldask sets --port itself: use port=...",
        ),
        (
            {"scheduler_options": "--dashboard-address :1"},
            "minimaldask sets --dashboard-address itself: use dashboard_port=...",
        ),
        (
            {"scheduler_options": "--idle-timeout 60"},
            "minimaldask sets --idle-timeout itself: use idle_timeout=...",
        ),
        ({"env": {"WORKER": "1"}}, "invalid env='WORKER': minimaldask sets this variable itself"),
        (
            {"env": {"DASK_SCHEDULER_ADDRESS": "tcp://x:1"}},
            "invalid env='DASK_SCHEDULER_ADDRESS': minimaldask sets this variable itself",
        ),
        (
            {"env": {"MINIMALDASK_IDLE_TIMEOUT": "1"}},
            "variables starting with MINIMALDASK_ are minimaldask's own",
        ),
        (
            {"env": {"EXTRA_PIP_PACKAGES": "x"}},
            "minimaldask sets this variable itself: use pip_packages=...",
        ),
        (
            {"pip_packages": "--index-url http://evil pandas"},
            "invalid pip_packages='--index-url': expected package names or requirements",
        ),
        (
            {"tolerations": [{"key": "spot", "operator": "Exist"}]},
            "invalid tolerations[...]['operator']='Exist': expected one of 'Exists', 'Equal'",
        ),
        (
            {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoScheduling"}]},
            "invalid tolerations[...]['effect']='NoScheduling': expected one of 'NoSchedule'",
        ),
        (
            {"worker_options": "--no-such-option"},
            "invalid worker_options='--no-such-option': No such option '--no-such-option'. "
            "(see `dask worker --help`)",
        ),
        (
            {"scheduler_options": ["--nthreads", "2"]},
            "invalid scheduler_options='--nthreads 2': No such option '--nthreads'",
        ),
        (
            {"worker_options": "--nthreads many"},
            "'many' is not a valid integer",
        ),
        (
            {"image_pull_secrets": "Bad_Secret"},
            "invalid image_pull_secrets='Bad_Secret': expected a DNS-1123 subdomain",
        ),
    ],
)
def test_options_that_cannot_work_or_would_fight_minimaldask(options, message):
    with pytest.raises(ValueError) as info:
        ClusterSpec.from_options(**options)
    assert message in str(info.value)


def test_dotted_secret_names_and_a_raised_ceiling_are_accepted():
    spec = ClusterSpec.from_options(image_pull_secrets="team.registry other-creds")
    assert spec.image_pull_secrets == ("team.registry", "other-creds")
    with dask.config.set({"minimaldask.max-workers": 1000}):
        assert ClusterSpec.from_options(workers=500).workers == 500
    spec = ClusterSpec.from_options(
        tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
    )
    assert spec.tolerations[0]["effect"] == "NoSchedule"
