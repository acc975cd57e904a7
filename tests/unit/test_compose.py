"""The Docker Compose files, checked statically: no Docker engine is needed, or used.

They must parse, reference only services, volumes and files that exist, publish nothing beyond loopback,
pin every image, give each kata a profile with the servers its text and the architecture call for, and hand
every service built from the Dockerfile every endpoint variable the code reads (katas.infra.settings), so
the same modules run unchanged natively and under Compose.
"""

from __future__ import annotations

import importlib.util
import io
import re
import tokenize
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from katas import REPO_ROOT
from katas.catalog import KATAS_PACKAGE_DIR, load_card
from katas.infra.settings import ENDPOINT_VARIABLES

pytestmark = pytest.mark.unit

ROOT_COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
KATA_IDS = ("siem", "ota_fleet", "hybrid_deploy", "sensors", "saas_tenancy", "api_gateway", "dr")

PER_SERVICE_VARIABLES = frozenset(
    {
        "KATAS_SERVICE_NAME",
        "KATAS_SERVICE_PORT",
        "KATAS_MISTAKES",
        "KATAS_WEBHOOK_LOG",
        "KATAS_CATALOG_DIR",
        "KATAS_RUN_ROOT",
    }
)
"""KATAS_* variables that are not endpoints: the launcher (or a test) sets them per service or per run."""

SET_FOR_EVERY_SERVICE = ("KATAS_SERVICE_NAME", "KATAS_SERVICE_PORT")
"""What katas.infra.servers.ServiceProcess hands every service natively; compose must do the same."""

EXPECTED_SERVERS: dict[str, set[str]] = {
    "siem": {"redpanda", "clickhouse", "minio", "redis", "webhook"},
    "ota_fleet": {"mosquitto", "mosquitto-b", "postgres", "minio", "redpanda", "clickhouse"},
    "hybrid_deploy": {"postgres", "etcd", "redpanda"},
    "sensors": {"mosquitto", "mosquitto-b", "redpanda", "clickhouse", "minio", "redis", "webhook"},
    "saas_tenancy": {"postgres", "redis", "redpanda"},
    "api_gateway": {
        "redis",
        "redis-replica",
        "redis-sentinel-1",
        "redis-sentinel-2",
        "redis-sentinel-3",
        "postgres",
        "redpanda",
        "clickhouse",
    },
    "dr": {"postgres", "postgres-standby", "redis", "redis-replica", "redpanda", "redpanda-dr", "minio"},
}
"""The servers each kata's profile must start: the kata text mapped through the architecture table."""

SERVER_KIND_OF: dict[str, str] = {
    "redpanda": "tansu",
    "redpanda-dr": "tansu",
    "minio": "s3rver",
    "clickhouse": "chdb",
    "clickhouse-t2": "chdb",
    "clickhouse-t3": "chdb",
    "clickhouse-t4": "chdb",
    "clickhouse-t5": "chdb",
    "clickhouse-t6": "chdb",
    "mosquitto": "mosquitto",
    "mosquitto-b": "mosquitto",
    "redis": "redis",
    "redis-replica": "redis_replica",
    "redis-sentinel-1": "redis_sentinel",
    "redis-sentinel-2": "redis_sentinel",
    "redis-sentinel-3": "redis_sentinel",
    "postgres": "postgres",
    "postgres-standby": "postgres_standby",
}
"""Which native server kind (kata.toml `[stack]`) each compose server stands in for."""


# ------------------------------------------------------------------------------------------ the loader
@dataclass(frozen=True)
class Service:
    name: str
    spec: dict[str, Any]
    source: Path
    """The compose file that defines the service; its relative paths are resolved from its folder."""

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    @property
    def profiles(self) -> list[str]:
        return list(self.spec.get("profiles") or [])

    @property
    def built_from_dockerfile(self) -> bool:
        build = self.spec.get("build")
        if build is None:
            return False
        _, dockerfile = _build_paths(self)
        return dockerfile.resolve() == DOCKERFILE.resolve()

    def depends_on(self) -> dict[str, str]:
        """Service name -> condition."""
        deps = self.spec.get("depends_on") or {}
        if isinstance(deps, list):
            return dict.fromkeys(deps, "service_started")
        return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


@dataclass
class Project:
    files: list[Path] = field(default_factory=list)
    documents: dict[Path, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    volumes: set[str] = field(default_factory=set)
    configs: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def in_profile(self, profile: str) -> dict[str, Service]:
        return {n: s for n, s in self.services.items() if not s.profiles or profile in s.profiles}

    def built(self) -> list[Service]:
        return [s for s in self.services.values() if s.built_from_dockerfile]


def _include_paths(entry: Any, base: Path) -> list[Path]:
    """`include:` takes a path, or a mapping whose `path` is a path or a list of paths."""
    paths = entry.get("path") if isinstance(entry, dict) else entry
    return [base / str(p) for p in ([paths] if isinstance(paths, str) else paths or [])]


def load_project(path: Path, project: Project | None = None) -> Project:
    """Parse a compose file and, recursively, the files it includes, the way `docker compose` merges them."""
    project = project or Project()
    path = path.resolve()
    if path in project.documents:
        project.problems.append(f"{path} is included more than once")
        return project
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise AssertionError(f"{path} is not a YAML mapping")
    project.files.append(path)
    project.documents[path] = document
    for entry in document.get("include") or []:
        for included in _include_paths(entry, path.parent):
            if not included.is_file():
                project.problems.append(f"{path.name} includes {included}, which does not exist")
                continue
            load_project(included, project)
    for name, spec in (document.get("services") or {}).items():
        if name in project.services:
            other = project.services[name].source
            project.problems.append(f"service {name!r} is defined in both {other} and {path}")
        project.services[name] = Service(name, spec or {}, path)
    project.volumes |= set(document.get("volumes") or {})
    for name, spec in (document.get("configs") or {}).items():
        project.configs[name] = (path, spec or {})
    return project


@pytest.fixture(scope="module")
def project() -> Project:
    assert ROOT_COMPOSE.is_file(), f"{ROOT_COMPOSE} is missing"
    return load_project(ROOT_COMPOSE)


# -------------------------------------------------------------------------------------------- helpers
def _build_paths(service: Service) -> tuple[Path, Path]:
    build = service.spec["build"]
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    context_dir = service.base_dir / context
    return context_dir, context_dir / dockerfile


def _env_file_paths(service: Service) -> list[Path]:
    entries = service.spec.get("env_file") or []
    entries = [entries] if isinstance(entries, str) else entries
    return [service.base_dir / (e["path"] if isinstance(e, dict) else e) for e in entries]


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        assert sep, f"{path}:{number}: expected KEY=VALUE, got {raw!r}"
        values[key.strip()] = value.strip().strip("'\"")
    return values


def service_environment(service: Service) -> dict[str, str]:
    """What the container gets: env files first, then `environment` (a bare `KEY` defines nothing)."""
    env: dict[str, str] = {}
    for path in _env_file_paths(service):
        if path.is_file():
            env.update(parse_env_file(path))
    environment = service.spec.get("environment") or {}
    if isinstance(environment, list):
        for item in environment:
            key, sep, value = str(item).partition("=")
            if sep:
                env[key] = value
    else:
        env.update({k: "" if v is None else str(v) for k, v in environment.items()})
    return env


def _bind_sources(service: Service) -> Iterator[str]:
    for volume in service.spec.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield str(volume["source"])
        else:
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                yield source


def _named_volumes(service: Service) -> Iterator[str]:
    for volume in service.spec.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                yield str(volume["source"])
        elif ":" in str(volume):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~", "$")):
                yield source


def _container_ports(service: Service) -> list[str]:
    ports = []
    for port in service.spec.get("ports") or []:
        if isinstance(port, dict):
            ports.append(str(port.get("target")))
        else:
            ports.append(str(port).split("/", 1)[0].rsplit(":", 1)[-1])
    return ports


def _command_module(service: Service) -> str | None:
    command = service.spec.get("command")
    if isinstance(command, str):
        command = command.split()
    return str(command[0]) if command else None


def _one_shot(project: Project) -> set[str]:
    """Init jobs, which exit and need no healthcheck: marked `restart: "no"`, or waited for to complete."""
    awaited = {
        name
        for service in project.services.values()
        for name, condition in service.depends_on().items()
        if condition == "service_completed_successfully"
    }
    return awaited | {n for n, s in project.services.items() if s.spec.get("restart") == "no"}


def _client_env(project: Project) -> dict[str, str]:
    """The KATAS_* endpoints as a service built from the Dockerfile sees them."""
    built = project.built()
    assert built, f"no compose service builds {DOCKERFILE.name}"
    return service_environment(built[0])


def _hosts_in(value: str) -> list[str]:
    """Host names in a comma-separated list of host:port or URLs."""
    hosts = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        host = urlsplit(part).hostname if "://" in part else part.rsplit(":", 1)[0]
        if host:
            hosts.append(host)
    return hosts


def katas_variables_in_source() -> dict[str, set[str]]:
    """KATAS_* names in string literals (and docstrings) of the Python code under katas/.

    Only strings are scanned: an environment variable is read by its name as a string, while a Python
    identifier such as KATAS_PACKAGE_DIR is a constant, not a variable.
    """
    pattern = re.compile(r"KATAS_[A-Z0-9_]+")
    found: dict[str, set[str]] = {}
    for path in sorted(KATAS_PACKAGE_DIR.rglob("*.py")):
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for token in tokens:
            if token.type == tokenize.STRING:
                for name in pattern.findall(token.string):
                    found.setdefault(name, set()).add(str(path.relative_to(REPO_ROOT)))
    return found


# ---------------------------------------------------------------------------------------------- tests
def test_compose_files_parse_and_merge(project: Project) -> None:
    assert not project.problems, "compose files do not merge:\n  " + "\n  ".join(project.problems)
    assert project.services, f"{ROOT_COMPOSE.name} defines no services"
    stray = sorted(
        str(p.relative_to(REPO_ROOT))
        for p in KATAS_PACKAGE_DIR.glob("*/compose.y*ml")
        if p.resolve() not in project.documents
    )
    assert not stray, f"kata compose files not reached from docker-compose.yml's `include:`: {stray}"


def test_every_service_has_an_image_or_a_build(project: Project) -> None:
    missing = [n for n, s in project.services.items() if "image" not in s.spec and "build" not in s.spec]
    assert not missing, f"services with neither `image` nor `build`: {missing}"


def test_every_image_is_pinned(project: Project) -> None:
    unpinned = []
    for name, service in project.services.items():
        image = service.spec.get("image")
        if image is None:
            continue
        image = str(image)
        repository = image.split("@", 1)[0].rsplit("/", 1)[-1]
        tag = repository.split(":", 1)[1] if ":" in repository else ""
        if "$" in image or ("@" not in image and tag in ("", "latest")):
            unpinned.append(f"{name}: {image}")
    assert not unpinned, f"images without a pinned tag (not `latest`, no variables): {unpinned}"


def test_every_profile_is_a_kata_id(project: Project) -> None:
    unknown = {n: s.profiles for n, s in project.services.items() if set(s.profiles) - set(KATA_IDS)}
    assert not unknown, f"profiles must be kata ids {KATA_IDS}; found {unknown}"
    unprofiled = [n for n, s in project.services.items() if not s.profiles]
    assert not unprofiled, f"services without `profiles` would start with every kata: {unprofiled}"


@pytest.mark.parametrize("kata", KATA_IDS)
def test_each_kata_profile_starts_its_servers(project: Project, kata: str) -> None:
    in_profile = set(project.in_profile(kata))
    assert in_profile, f"no service has profile {kata!r}: `docker compose --profile {kata} up` starts nothing"
    missing = EXPECTED_SERVERS[kata] - in_profile
    assert not missing, f"profile {kata!r} lacks {sorted(missing)} (has {sorted(in_profile)})"


@pytest.mark.parametrize("kata", KATA_IDS)
def test_each_kata_profile_covers_its_card_stack(project: Project, kata: str) -> None:
    """Once a card lists its `[stack]`, its profile holds as many servers of each kind, and its services."""
    card_path = KATAS_PACKAGE_DIR / kata / "kata.toml"
    if not card_path.is_file():
        pytest.skip(f"{card_path} is not written yet")
    card = load_card(card_path)
    assert set(SERVER_KIND_OF) <= set(project.services), "SERVER_KIND_OF names services compose lacks"
    in_profile = project.in_profile(kata)
    have = Counter(SERVER_KIND_OF[n] for n in in_profile if n in SERVER_KIND_OF)
    need = Counter(server.kind for server in card.stack.servers)
    short = {
        kind: f"{count} needed, {have[kind]} in the profile"
        for kind, count in need.items()
        if have[kind] < count
    }
    assert not short, f"{kata}: kata.toml [stack] servers missing from profile {kata!r}: {short}"
    modules = {_command_module(s) for s in in_profile.values() if s.built_from_dockerfile}
    absent = sorted(s.module for s in card.stack.services if s.module not in modules)
    assert not absent, (
        f"{kata}: kata.toml [stack] services with no compose service in profile {kata!r}: {absent}"
    )


def test_depends_on_names_services_of_the_same_profiles(project: Project) -> None:
    problems = []
    for name, service in project.services.items():
        for dependency, condition in service.depends_on().items():
            target = project.services.get(dependency)
            if target is None:
                problems.append(f"{name} depends on {dependency!r}, which is not defined")
                continue
            for profile in service.profiles:
                if target.profiles and profile not in target.profiles:
                    problems.append(
                        f"{name} (profile {profile}) depends on {dependency}, not in that profile"
                    )
            if condition == "service_healthy" and "healthcheck" not in target.spec:
                problems.append(f"{name} waits for {dependency} to be healthy, but it has no healthcheck")
    assert not problems, "broken depends_on:\n  " + "\n  ".join(problems)


def test_long_running_services_have_healthchecks(project: Project) -> None:
    one_shot = _one_shot(project)
    missing = [n for n, s in project.services.items() if n not in one_shot and "healthcheck" not in s.spec]
    assert not missing, f"services without a healthcheck (only init jobs may skip it): {missing}"


def test_published_ports_bind_loopback_only(project: Project) -> None:
    exposed = []
    for name, service in project.services.items():
        for port in service.spec.get("ports") or []:
            if isinstance(port, dict):
                if port.get("host_ip") != "127.0.0.1":
                    exposed.append(f"{name}: {port}")
            elif not (str(port).startswith("127.0.0.1:") and str(port).count(":") == 2):
                exposed.append(f"{name}: {port!r}")
    assert not exposed, f"ports must be published as 127.0.0.1:<host>:<container>; found {exposed}"


def test_referenced_files_exist(project: Project) -> None:
    missing = []
    for name, service in project.services.items():
        for source in _bind_sources(service):
            path = (service.base_dir / Path(source).expanduser()).resolve()
            if not path.is_relative_to(REPO_ROOT.resolve()) or not path.exists():
                missing.append(f"{name}: bind mount {source}")
        for path in _env_file_paths(service):
            if not path.is_file():
                missing.append(f"{name}: env_file {path.relative_to(REPO_ROOT)}")
        if "build" in service.spec:
            context, dockerfile = _build_paths(service)
            if not context.is_dir():
                missing.append(f"{name}: build context {context}")
            if not dockerfile.is_file():
                missing.append(f"{name}: build dockerfile {dockerfile}")
    for config, (compose_file, spec) in project.configs.items():
        if "file" in spec and not (compose_file.parent / spec["file"]).is_file():
            missing.append(f"config {config}: file {spec['file']}")
    assert not missing, "referenced files that do not exist in the repo:\n  " + "\n  ".join(missing)


def test_named_volumes_and_configs_are_declared(project: Project) -> None:
    undeclared = [
        f"{name}: volume {volume}"
        for name, service in project.services.items()
        for volume in _named_volumes(service)
        if volume not in project.volumes
    ]
    for name, service in project.services.items():
        for config in service.spec.get("configs") or []:
            source = config["source"] if isinstance(config, dict) else config
            if source not in project.configs:
                undeclared.append(f"{name}: config {source}")
    assert not undeclared, f"not declared at the top level: {undeclared}"


def test_some_service_is_built_from_the_dockerfile(project: Project) -> None:
    assert project.built(), f"no compose service builds {DOCKERFILE.name}"


def test_dockerfile_services_get_every_endpoint_variable(project: Project) -> None:
    gaps = {
        service.name: sorted(ENDPOINT_VARIABLES - set(service_environment(service)))
        for service in project.built()
    }
    gaps = {name: missing for name, missing in gaps.items() if missing}
    assert not gaps, (
        f"services built from the Dockerfile must define every variable of katas.infra.settings "
        f"(set it empty if compose has no such server); missing: {gaps}"
    )


def test_dockerfile_services_get_their_per_service_variables(project: Project) -> None:
    problems = []
    for service in project.built():
        env = service_environment(service)
        module = _command_module(service)
        spec = importlib.util.find_spec(module) if module else None
        required = set(SET_FOR_EVERY_SERVICE)
        if spec is not None and spec.origin:
            source = Path(spec.origin).read_text()
            required |= set(re.findall(r"environ\[\s*[\"'](KATAS_[A-Z0-9_]+)[\"']\s*\]", source))
        missing = sorted(v for v in required if not env.get(v))
        if missing:
            problems.append(f"{service.name} ({module}) lacks {missing}")
        port = env.get("KATAS_SERVICE_PORT")
        container_ports = _container_ports(service)
        if port and container_ports and port not in container_ports:
            problems.append(
                f"{service.name} listens on {port} but publishes container ports {container_ports}"
            )
    assert not problems, "per-service variables the launcher sets natively:\n  " + "\n  ".join(problems)


def test_dockerfile_service_commands_are_modules_of_the_lab(project: Project) -> None:
    wrong = []
    for service in project.built():
        module = _command_module(service)
        if not module or not module.startswith(("katas.", "loadgen.")):
            wrong.append(f"{service.name}: command {service.spec.get('command')!r} is not a lab module")
        elif importlib.util.find_spec(module) is None:
            wrong.append(f"{service.name}: module {module} does not exist")
    assert not wrong, f"the image runs `python -m <command>`: {wrong}"


def test_katas_variables_in_code_are_endpoints_or_per_service() -> None:
    unknown = {
        name: sorted(files)
        for name, files in katas_variables_in_source().items()
        if name not in ENDPOINT_VARIABLES and name not in PER_SERVICE_VARIABLES
    }
    assert not unknown, (
        "KATAS_* variables read in katas/ that compose cannot know about: add a field to "
        "katas.infra.settings.InfraSettings, or to PER_SERVICE_VARIABLES here if the launcher sets it: "
        f"{unknown}"
    )


def test_compose_sets_only_known_katas_variables(project: Project) -> None:
    known = ENDPOINT_VARIABLES | PER_SERVICE_VARIABLES
    stray = {
        service.name: sorted(
            k for k in service_environment(service) if k.startswith("KATAS_") and k not in known
        )
        for service in project.services.values()
    }
    stray = {name: names for name, names in stray.items() if names}
    assert not stray, f"KATAS_* variables no code reads (typo, or a missing settings field): {stray}"


def test_endpoint_hosts_are_compose_services(project: Project) -> None:
    unknown = []
    for service in project.built():
        for key, value in service_environment(service).items():
            if key in ENDPOINT_VARIABLES and ("://" in value or re.search(r":\d+", value)):
                unknown += [f"{key}: {host}" for host in _hosts_in(value) if host not in project.services]
    assert not unknown, f"endpoints naming hosts that are not compose services: {sorted(set(unknown))}"


def test_server_credentials_match_the_endpoint_variables(project: Project) -> None:
    env = _client_env(project)
    services = project.services
    minio = service_environment(services["minio"])
    postgres = service_environment(services["postgres"])
    clickhouse = service_environment(services["clickhouse"])
    clickhouse_url = urlsplit(env["KATAS_CLICKHOUSE_URL"])
    pairs = {
        "MinIO user / KATAS_S3_ACCESS_KEY": (minio["MINIO_ROOT_USER"], env["KATAS_S3_ACCESS_KEY"]),
        "MinIO password / KATAS_S3_SECRET_KEY": (minio["MINIO_ROOT_PASSWORD"], env["KATAS_S3_SECRET_KEY"]),
        "Postgres password / KATAS_POSTGRES_DSN": (
            postgres["POSTGRES_PASSWORD"],
            urlsplit(env["KATAS_POSTGRES_DSN"]).password,
        ),
        "Postgres password / KATAS_POSTGRES_STANDBY_DSN": (
            postgres["POSTGRES_PASSWORD"],
            urlsplit(env["KATAS_POSTGRES_STANDBY_DSN"]).password,
        ),
        "Standby PGPASSWORD / POSTGRES_PASSWORD": (
            service_environment(services["postgres-standby"])["PGPASSWORD"],
            postgres["POSTGRES_PASSWORD"],
        ),
        "ClickHouse user / KATAS_CLICKHOUSE_URL": (clickhouse["CLICKHOUSE_USER"], clickhouse_url.username),
        "ClickHouse password / KATAS_CLICKHOUSE_URL": (
            clickhouse["CLICKHOUSE_PASSWORD"],
            clickhouse_url.password,
        ),
    }
    mismatched = {what: values for what, values in pairs.items() if values[0] != values[1]}
    assert not mismatched, f"servers and clients disagree on credentials: {mismatched}"
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses to start with a password under 8 characters"


def test_sentinel_config_watches_the_compose_primary(project: Project) -> None:
    env = _client_env(project)
    config = (REPO_ROOT / "compose" / "redis" / "sentinel.conf").read_text()
    monitor = re.search(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", config, re.MULTILINE)
    assert monitor, "compose/redis/sentinel.conf has no `sentinel monitor <name> <host> <port> <quorum>` line"
    name, host, port, quorum = monitor.groups()
    assert name == env["KATAS_REDIS_MASTER_NAME"], (
        f"sentinels watch {name!r}, clients ask for KATAS_REDIS_MASTER_NAME"
    )
    assert f"redis://{host}:{port}/" in env["KATAS_REDIS_URL"], (
        f"sentinels watch {host}:{port}, not KATAS_REDIS_URL"
    )
    sentinels = [n for n in project.services if n.startswith("redis-sentinel")]
    assert int(quorum) <= len(sentinels) // 2 + 1, f"quorum {quorum} with {len(sentinels)} sentinels"
    assert sorted(_hosts_in(env["KATAS_REDIS_SENTINELS"])) == sorted(sentinels), (
        f"KATAS_REDIS_SENTINELS {env['KATAS_REDIS_SENTINELS']!r} must list every sentinel service {sentinels}"
    )


def test_mosquitto_bridges_dial_compose_services(project: Project) -> None:
    configs = sorted((REPO_ROOT / "compose" / "mosquitto").glob("*.conf"))
    assert configs, "compose/mosquitto/*.conf is missing"
    addresses = [
        (path.name, line.split()[1])
        for path in configs
        for line in path.read_text().splitlines()
        if line.startswith("address ")
    ]
    assert addresses, "no mosquitto config bridges to another broker: the MQTT katas need two bridged regions"
    unknown = [
        f"{name}: {address}" for name, address in addresses if _hosts_in(address)[0] not in project.services
    ]
    assert not unknown, f"bridge addresses that are not compose services: {unknown}"


def _dockerfile_instructions(keyword: str) -> list[str]:
    return re.findall(rf"^{keyword} (.+)$", DOCKERFILE.read_text(), re.MULTILINE)


def test_dockerfile_base_image_is_a_pinned_python_3_11() -> None:
    args = dict(arg.split("=", 1) for arg in _dockerfile_instructions("ARG") if "=" in arg)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line.split()[0])
        for line in _dockerfile_instructions("FROM")
    ]
    assert bases, "Dockerfile has no FROM"
    wrong = [
        b for b in bases if not b.startswith("python:3.11") or b.rsplit(":", 1)[-1] in ("3.11", "latest")
    ]
    assert not wrong, f"base images must be python:3.11 pinned to a patch release: {wrong}"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = _dockerfile_instructions("USER")
    assert users, "Dockerfile has no USER: containers would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"the last USER is root: {users}"


def test_dockerfile_installs_from_the_lock_and_runs_modules() -> None:
    entrypoints = _dockerfile_instructions("ENTRYPOINT")
    assert entrypoints[-1:] == ['["python", "-m"]'], (
        f"ENTRYPOINT must be python -m, so a compose service's command is its module; found {entrypoints}"
    )
    installs = [r for r in _dockerfile_instructions("RUN") if "pip install" in r]
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install -c constraints\.txt \.", text), (
        f"install the project with `pip install -c constraints.txt .` (against the lock); found {installs}"
    )


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    missing = {".venv", ".katas", "reports", "tools/node/node_modules", ".git"} - ignored
    assert not missing, f".dockerignore lacks {sorted(missing)}"
