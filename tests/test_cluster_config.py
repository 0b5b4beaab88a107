"""The deployment files agree with the app: cluster.yaml (Ray's cluster launcher) parses and its
node types can place everything serve_config.yaml (``serve deploy``) asks for, the way build_app
asks for it under that file's settings. No cluster is started: the files are read, Serve's own
schema validates the config, and the application is built (bound, not run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# Service URLs and secrets live in the nodes' environment, not in serve_config.yaml (it says so);
# stand-ins here let the production settings validate.
DEPLOY_ENV = {
    "CHAT_ENGINE_DATABASE_URL": "postgresql://chat@db.internal:5432/chat",
    "CHAT_ENGINE_REDIS_URL": "redis://redis.internal:6379/0",
    "CHAT_ENGINE_ADMIN_TOKEN": "admin-token-from-the-secret-store",
    "CHAT_ENGINE_SESSION_TOKEN_SECRET": "session-secret-from-the-secret-store",
    "CHAT_ENGINE_SECRETS_KEY": "gAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
}


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / name).read_text())
    assert isinstance(data, dict), f"{name} is not a mapping"
    return data


@pytest.fixture
def serve_config() -> dict[str, Any]:
    return _load("serve_config.yaml")


@pytest.fixture
def cluster() -> dict[str, Any]:
    return _load("cluster.yaml")


@pytest.fixture
def app_settings(serve_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings the deployed app runs with: serve_config.yaml's env vars plus the nodes'."""
    from runtime.config import get_settings, load_settings

    env = serve_config["applications"][0]["runtime_env"]["env_vars"]
    for key in [k for k in os.environ if k.startswith("CHAT_ENGINE_")]:
        monkeypatch.delenv(key)
    for key, value in {**env, **DEPLOY_ENV}.items():
        monkeypatch.setenv(key, str(value))
    get_settings.cache_clear()
    yield load_settings()
    get_settings.cache_clear()


def _demands(app: Any, overrides: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, float]]]:
    """(deployment, resources one replica needs) for every replica of the bound application."""
    out: list[tuple[str, dict[str, float]]] = []
    seen: set[str] = set()
    todo = [app]
    while todo:
        dep = todo.pop()._bound_deployment
        if dep.name in seen:
            continue
        seen.add(dep.name)
        todo += [a for a in dep.init_args if type(a).__name__ == "Application"]
        opts = {**dep.ray_actor_options, **overrides.get(dep.name, {}).get("ray_actor_options", {})}
        need = {"CPU": float(opts.get("num_cpus") or 0), "GPU": float(opts.get("num_gpus") or 0),
                **{k: float(v) for k, v in (opts.get("resources") or {}).items()}}
        replicas = overrides.get(dep.name, {}).get("num_replicas", dep._deployment_config.num_replicas)
        out += [(dep.name, {k: v for k, v in need.items() if v})] * int(replicas)
    return out


def _fits(need: dict[str, float], have: dict[str, Any]) -> bool:
    return all(float(have.get(k, 0)) >= v for k, v in need.items())


def test_cluster_yaml_parses_and_names_its_node_types(cluster: dict[str, Any]) -> None:
    """Broken: nothing. Must hold: the launcher's required keys, a head type among the node
    types, resources on every type, the metrics export port on every `ray start`."""
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert {"provider", "auth", "setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands"} <= set(cluster)
    for name, spec in types.items():
        assert spec["resources"].get("CPU", 0) >= 0, name
        assert spec["min_workers"] <= spec["max_workers"], name
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    assert all("--metrics-export-port" in c for c in starts if "ray start" in c)


def test_serve_config_is_a_valid_deploy_config_for_build_app(serve_config: dict[str, Any]) -> None:
    """Broken: nothing. Must hold: Serve's own schema accepts the file (what `serve deploy`
    checks), and it names serve_app:build_app, whose deployments it overrides by their names."""
    from ray.serve.schema import ServeDeploySchema

    import serve_app

    schema = ServeDeploySchema.model_validate(serve_config)
    (app,) = schema.applications
    assert app.import_path == "serve_app:build_app"
    module, _, attr = app.import_path.partition(":")
    assert getattr(__import__(module), attr) is serve_app.build_app
    assert app.route_prefix == "/"
    assert {d.name for d in app.deployments} <= {"Ingress", "Embedder", "Generator"}


def test_node_types_can_place_every_replica_and_the_session_actors(
    cluster: dict[str, Any], serve_config: dict[str, Any], app_settings: Any,
) -> None:
    """Broken: nothing. Must hold: every replica build_app asks for under serve_config.yaml's
    settings fits some node type (the Generator a GPU worker), the whole app fits the cluster at
    its largest, and the session actors' resource is advertised by node types with no GPU, so a
    session never takes a model node's place; the files name the same resource."""
    from serve_app import build_app

    assert app_settings.environment == "production"
    spec = serve_config["applications"][0]
    overrides = {d["name"]: d for d in spec.get("deployments", [])}
    demands = _demands(build_app(spec.get("args")), overrides)
    assert {name for name, _ in demands} == {"Ingress", "Embedder", "Generator"}
    types = cluster["available_node_types"]
    for name, need in demands:
        assert any(_fits(need, t["resources"]) for t in types.values()), (name, need)
    gpu_need = [need for name, need in demands if name == "Generator"][0]
    assert gpu_need.get("GPU", 0) >= 1
    assert all("GPU" in t["resources"] for t in types.values() if _fits(gpu_need, t["resources"]))
    # At its largest, the cluster has the CPUs and GPUs for all the replicas at once.
    for res in ("CPU", "GPU"):
        total = sum(float(t["resources"].get(res, 0)) * (1 if n == cluster["head_node_type"]
                    else t["max_workers"]) for n, t in types.items())
        assert sum(need.get(res, 0) for _, need in demands) <= total, res
    slots = app_settings.session_resource
    assert slots == "session_slots"
    hosts = {n: t for n, t in types.items() if t["resources"].get(slots)}
    assert hosts, f"no node type advertises {slots}"
    assert all(not t["resources"].get("GPU") for t in hosts.values())
    assert all(isinstance(t["resources"][slots], int) and t["resources"][slots] > 0
               for t in hosts.values())
