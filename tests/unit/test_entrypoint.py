import sys

import pytest

from minimaldask.pod.entrypoint import EntrypointError, plan, prepare, site_packages

SCHEDULER = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]
#: Added by the entrypoint after the scheduler's address (and TLS), before the arguments.
NANNY = ["--preload-nanny", "minimaldask.pod.nanny"]


def test_scheduler_by_default_on_the_article_ports():
    p = plan({})
    assert p.role == "scheduler"
    assert p.argv == [*SCHEDULER, "--port", "8786", "--dashboard-address", ":8787"]


def test_scheduler_port_dashboard_port_and_arguments():
    p = plan({"PORT": "9000", "DASHBOARD_PORT": "9001", "ARGUMENTS": "--idle-timeout '5 minutes'"})
    assert p.argv == [
        *SCHEDULER,
        "--port",
        "9000",
        "--dashboard-address",
        ":9001",
        "--idle-timeout",
        "5 minutes",
    ]


@pytest.mark.parametrize("value", ["1", "true", "yes", "worker"])
def test_worker_when_worker_is_set(value):
    p = plan({"WORKER": value})
    assert p.role == "worker"
    assert p.argv == [*WORKER, "master-node:8786", *NANNY]


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off"])
def test_worker_set_to_false_means_scheduler(value):
    assert plan({"WORKER": value}).role == "scheduler"


def test_worker_follows_port_and_scheduler_address_and_arguments():
    assert plan({"WORKER": "1", "PORT": "9000"}).argv == [*WORKER, "master-node:9000", *NANNY]
    p = plan(
        {
            "WORKER": "1",
            "DASK_SCHEDULER_ADDRESS": "tcp://dask-scheduler.ns.svc.cluster.local:8786",
            "ARGUMENTS": "--nthreads 2 --memory-limit 4GiB --name 'w 1'",
        }
    )
    assert p.argv == [
        *WORKER,
        "tcp://dask-scheduler.ns.svc.cluster.local:8786",
        *NANNY,
        "--nthreads",
        "2",
        "--memory-limit",
        "4GiB",
        "--name",
        "w 1",
    ]


def test_extra_packages_are_split_and_prefix_defaults_under_tmp(tmp_path):
    p = plan({"EXTRA_PIP_PACKAGES": "camelcase  pymongo==4.6", "TMPDIR": str(tmp_path)})
    assert p.pip_packages == ["camelcase", "pymongo==4.6"]
    assert p.prefix == str(tmp_path / "minimaldask")
    assert plan({"MINIMALDASK_PREFIX": "/x"}).prefix == "/x"
    assert site_packages("/x").startswith("/x/lib/python3.")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "abc"}, "PORT='abc' is not a port number"),
        ({"PORT": "70000"}, "PORT='70000' is not a port number"),
        ({"DASHBOARD_PORT": "-1"}, "DASHBOARD_PORT='-1' is not a port number"),
        ({"ARGUMENTS": "--name 'unclosed"}, "ARGUMENTS could not be split like a shell would"),
        ({"EXTRA_PIP_PACKAGES": 'a "b'}, "EXTRA_PIP_PACKAGES could not be split"),
        ({"WORKER": "1", "DASK_SCHEDULER_ADDRESS": "a b:1"}, "DASK_SCHEDULER_ADDRESS='a b:1'"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(EntrypointError) as info:
        plan(env)
    assert message in str(info.value)


def test_apk_packages_on_a_machine_without_apk_name_the_debian_alternative(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    p = plan({"EXTRA_APK_PACKAGES": "apache2"})
    with pytest.raises(EntrypointError) as info:
        prepare(p, {})
    assert "not Alpine" in str(info.value)
    assert "EXTRA_OS_PACKAGES" in str(info.value)


FORK = {
    "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "fork",
    "PYTHONHASHSEED": "6640",
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def test_a_worker_forks_its_process_and_its_nanny_starts_with_what_a_spawned_one_would_get():
    assert plan({"WORKER": "1"}).env == FORK
    # The scheduler has no nanny: nothing of this.
    assert plan({}).env == {}


@pytest.mark.parametrize(
    ("given", "seed", "trim"),
    [
        ({"PYTHONHASHSEED": "42", "MALLOC_TRIM_THRESHOLD_": "0"}, "42", "0"),
        # distributed's nanny replaces a seed of 0 (randomization off) with its own.
        ({"PYTHONHASHSEED": "0"}, "6640", "65536"),
        (
            {
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__PYTHONHASHSEED": "7",
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_": "1024",
            },
            "7",
            "1024",
        ),
        # The variable itself wins over dask's setting, as in distributed.
        (
            {
                "MALLOC_TRIM_THRESHOLD_": "1",
                "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_": "2",
            },
            "6640",
            "1",
        ),
    ],
)
def test_the_pods_own_seed_and_trim_threshold_are_kept(given, seed, trim):
    env = plan({"WORKER": "1", **given}).env
    assert (env["PYTHONHASHSEED"], env["MALLOC_TRIM_THRESHOLD_"]) == (seed, trim)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_pod_that_chose_its_start_method_is_left_as_it_is(method):
    assert (
        plan({"WORKER": "1", "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": method}).env == {}
    )


def test_the_process_start_defaults_are_distributeds():
    import inspect
    from pathlib import Path

    import distributed
    import yaml
    from distributed.nanny import Nanny

    from minimaldask.pod.entrypoint import PROCESS_START_ENV

    defaults = yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text())
    pre_spawn = defaults["distributed"]["nanny"]["pre-spawn-environ"]
    assert {k: v for k, v in PROCESS_START_ENV.items() if k != "PYTHONHASHSEED"} == {
        k: str(v) for k, v in pre_spawn.items()
    }
    # The seed distributed's Nanny sets when pre-spawn-environ has none.
    assert f'"PYTHONHASHSEED": "{PROCESS_START_ENV["PYTHONHASHSEED"]}"' in inspect.getsource(Nanny)
