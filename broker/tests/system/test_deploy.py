"""The deployment files in deploy/: they parse, agree with each other and with spated.

Static (no broker; any target):
  - every YAML/JSON/TOML file under deploy/ parses;
  - the Dockerfile, compose.yaml, the Kubernetes manifests, prometheus.yml and the Grafana
    provisioning agree on the Kafka and admin ports, the probe/health paths, the data volume,
    the uid, and with spated's documented defaults (deploy/spated.toml, config.rs, admin.rs);
  - /.dockerignore keeps the build context small but keeps what the build needs;
  - the Grafana dashboard is well formed and charts every metric family spated exports.

Against spated (spate_only):
  - every metric name in the dashboard's PromQL is exported by a running spated after some
    traffic, and the labels the queries group or filter by exist on those metrics;
  - the flags in the Dockerfile's ENTRYPOINT and the StatefulSet's args are flags spated
    accepts (`docker build` cannot run here: no Docker daemon);
  - the Kubernetes ConfigMap's spated.toml is a config spated starts with.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import spate_harness
from spate_harness import HOST, REPO, Broker, unique_topic

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "spate-dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
SAMPLE_CONFIG = DEPLOY / "spated.toml"
ADMIN_RS = REPO / "broker" / "src" / "admin.rs"
CONFIG_RS = REPO / "broker" / "src" / "config.rs"

DATA_DIR = "/var/lib/spate"

# The metric families the dashboard must chart (broker/src/metrics.rs).
METRIC_FAMILIES = [
    "spate_kafka_requests_total",
    "spate_kafka_request_seconds",
    "spate_kafka_connections",
    "spate_produce_bytes_total",
    "spate_fetch_bytes_total",
    "spate_log_fsync_seconds",
    "spate_partitions",
    "spate_partition_produce_bytes_total",
    "spate_partition_fetch_bytes_total",
    "spate_partition_high_watermark",
    "spate_partition_log_start_offset",
    "spate_reactor_stalls_total",
    "spate_mesh_pending_requests",
    "spate_fetch_sessions",
    "spate_consumer_groups",
]
# Labels Prometheus adds at scrape time (job, instance) or a histogram carries (le).
SCRAPE_LABELS = {"instance", "job", "le"}


# ------------------------------------------------------------------ helpers


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def sample_config() -> dict:
    return tomllib.loads(SAMPLE_CONFIG.read_text())


def kafka_port() -> int:
    return port_of(sample_config()["kafka_addr"])


def admin_port() -> int:
    return port_of(sample_config()["admin_addr"])


def admin_paths() -> set[str]:
    """The GET endpoints admin.rs routes."""
    return set(re.findall(r'\(Method::Get, "(/[^"]*)"\)', ADMIN_RS.read_text()))


def dockerfile_stages(path: Path = DOCKERFILE) -> list[dict]:
    """The Dockerfile as stages: {"from": ..., "name": ..., "ins": [(INSTR, args), ...]};
    ARGs before the first FROM are in stage 0 under "args"."""
    lines, cur = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):  # a comment inside a continued instruction
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        lines.append(cur + s)
        cur = ""
    assert not cur, "Dockerfile ends inside a continued line"
    meta_args: dict[str, str] = {}
    stages: list[dict] = []
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            image = re.sub(r"\$\{(\w+)\}", lambda m: meta_args.get(m.group(1), m.group(0)),
                           words[0])
            stages.append({"from": image, "name": name, "ins": []})
        elif not stages:
            assert instr == "ARG", f"only ARG may precede FROM, not {instr}"
            k, _, v = rest.partition("=")
            meta_args[k] = v
        else:
            stages[-1]["ins"].append((instr, rest))
    stages[0]["args"] = meta_args
    return stages


def instructions(stage: dict, name: str) -> list[str]:
    return [rest for instr, rest in stage["ins"] if instr == name]


def exec_form(rest: str) -> list[str]:
    """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD (shell form is not used here)."""
    assert rest.startswith("["), f"not in exec (JSON array) form: {rest}"
    return json.loads(rest)


def flag_value(argv: list[str], flag: str) -> str:
    i = argv.index(flag)
    return argv[i + 1]


def flags_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def runtime_stage() -> dict:
    return dockerfile_stages()[-1]


def entrypoint() -> list[str]:
    (ep,) = instructions(runtime_stage(), "ENTRYPOINT")
    return exec_form(ep)


def image_uid() -> int:
    (user,) = instructions(runtime_stage(), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: must be numeric for Kubernetes' runAsNonRoot"
    return int(uid)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for f in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d is not None]
    return docs


def k8s_one(kind: str, name: str | None = None) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def statefulset() -> dict:
    return k8s_one("StatefulSet")


def spated_container() -> dict:
    (c,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return c


def container_ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def configmap_config() -> tuple[dict, str]:
    """(parsed spated.toml of the ConfigMap, its text)."""
    vol = next(v for v in statefulset()["spec"]["template"]["spec"]["volumes"]
               if "configMap" in v)
    cm = k8s_one("ConfigMap", vol["configMap"]["name"])
    (key,) = cm["data"]
    text = cm["data"][key]
    return tomllib.loads(text), text


def configmap_file_path() -> str:
    """Where the container sees the ConfigMap's spated.toml."""
    spec = statefulset()["spec"]["template"]["spec"]
    vol = next(v for v in spec["volumes"] if "configMap" in v)
    mount = next(m for m in spated_container()["volumeMounts"] if m["name"] == vol["name"])
    items = vol["configMap"].get("items")
    rel = items[0]["path"] if items else next(iter(configmap_config()[0]))
    return f"{mount['mountPath'].rstrip('/')}/{rel}"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []

    def walk(ps):
        for p in ps:
            out.append(p)
            walk(p.get("panels", []))
    walk(dashboard()["panels"])
    return out


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for v in dashboard()["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            exprs.append(q)
    return exprs


METRIC_RE = re.compile(r"\bspate_[a-zA-Z0-9_:]*")


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dashboard_metrics() -> set[str]:
    return {base_name(m) for e in dashboard_queries() for m in METRIC_RE.findall(e)}


def query_labels(expr: str) -> set[str]:
    """Label names an expression groups by or matches on."""
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    # label_values(selector, label)
    m = re.match(r"label_values\((?:.*,)?\s*(\w+)\s*\)$", expr.strip())
    if m:
        labels.add(m.group(1))
    return labels


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per /.dockerignore line, with Docker's semantics: paths relative to the
    context root, `**` any number of directories, a match excludes everything below."""
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx, i = "", 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((neg, re.compile(rx + "(?:/.*)?$")))
    return out


def docker_ignored(path: str) -> bool:
    ignored = False
    for neg, rx in dockerignore_patterns():
        if rx.match(path):
            ignored = not neg
    return ignored


def http_get(port: int, path: str) -> tuple[int, bytes]:
    url = f"http://{HOST}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(port, "/metrics")
    assert status == 200
    return [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def spated_help() -> str:
    if not spate_harness.SPATE_BIN.exists():
        pytest.fail(f"spated not found at {spate_harness.SPATE_BIN} "
                    "(cargo build -p spate-broker --bin spated, or set SPATE_BIN)")
    p = subprocess.run([str(spate_harness.SPATE_BIN), "--help"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


# ------------------------------------------------------------------ (a) static checks


def test_every_deploy_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    parsed = 0
    for f in files:
        text = f.read_text()
        if f.suffix in (".yaml", ".yml"):
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
            assert docs, f"{f}: no YAML document"
        elif f.suffix == ".json":
            json.loads(text)
        elif f.suffix == ".toml":
            tomllib.loads(text)
        else:
            continue
        parsed += 1
    assert parsed >= 8, [str(f) for f in files]
    # The TOML inside the ConfigMap, too.
    configmap_config()


def test_broker_defaults_are_the_deploy_ports_and_paths():
    """deploy/spated.toml's defaults are config.rs's, and admin.rs serves the probe paths."""
    src = CONFIG_RS.read_text()
    conf = sample_config()
    assert f'"{conf["kafka_addr"]}"' in src and f'"{conf["admin_addr"]}"' in src
    assert (kafka_port(), admin_port()) == (9092, 9644)
    assert {"/v1/status/live", "/v1/status/ready", "/metrics"} <= admin_paths()


def test_dockerfile():
    stages = dockerfile_stages()
    assert len(stages) == 2, "multi-stage: a builder and the runtime"
    builder, runtime = stages
    # Builder: Rust on Debian bookworm, at least the workspace's rust-version.
    m = re.fullmatch(r"rust:(\d+\.\d+(?:\.\d+)?)-bookworm", builder["from"])
    assert m, builder["from"]
    rust_version = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["package"][
        "rust-version"]
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(m.group(1)) >= as_tuple(rust_version)
    build = " ".join(instructions(builder, "RUN"))
    assert "cargo build --release" in build
    assert "-p spate-broker --bin spated" in build and "-p spate-tools --bin spate" in build
    # Runtime: Debian bookworm slim, non-root, the data volume, both ports.
    assert runtime["from"] == "debian:bookworm-slim"
    assert image_uid() != 0
    (volume,) = instructions(runtime, "VOLUME")
    assert exec_form(volume) == [DATA_DIR]
    exposed = {int(p.split("/")[0]) for e in instructions(runtime, "EXPOSE") for p in e.split()}
    assert exposed == {kafka_port(), admin_port()}
    ep = entrypoint()
    assert ep[0] == "spated"
    assert flag_value(ep, "--data-dir") == DATA_DIR
    assert port_of(flag_value(ep, "--kafka-addr")) == kafka_port()
    assert port_of(flag_value(ep, "--admin-addr")) == admin_port()
    # 0.0.0.0 needs an advertised address: the image sets the variable spated reads.
    envs = " ".join(instructions(runtime, "ENV"))
    assert "SPATE_ADVERTISED_KAFKA_ADDR=" in envs
    (hc,) = instructions(runtime, "HEALTHCHECK")
    cmd = exec_form(hc[hc.index("CMD") + 3:].strip())
    url = cmd[-1]
    assert url == f"http://127.0.0.1:{admin_port()}/v1/status/ready"
    assert "/v1/status/ready" in admin_paths()
    # What the runtime stage copies from the context is not ignored.
    for rest in instructions(runtime, "COPY"):
        if "--from=" not in rest:
            for src in rest.split()[:-1]:
                assert not docker_ignored(src), src


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    # Each workspace member, the lock file and the patched crate must reach the builder.
    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    keep = ["Cargo.toml", "Cargo.lock", "net/vendor/kafka-protocol/Cargo.toml",
            "deploy/spated.toml", "deploy/docker/Dockerfile"]
    keep += [f"{m}/Cargo.toml" for m in members] + [f"{m}/src/lib.rs" for m in members]
    for path in keep:
        assert not docker_ignored(path), f"{path} is excluded from the build context"
    drop = ["target/debug/spated", ".git/HEAD", "perf/results/x.json", "data/x",
            "broker/tests/system/clients/js/node_modules/kafkajs/index.js",
            "broker/tests/system/__pycache__/x.pyc"]
    for path in drop:
        assert docker_ignored(path), f"{path} is in the build context"
    # Everything .gitignore keeps out of the repository stays out of the image too.
    for line in (REPO / ".gitignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sample = line.strip("/").replace("*", "x")
        if line.endswith("/"):
            sample += "/f"
        if not line.startswith("/"):
            sample = "some/dir/" + sample
        assert docker_ignored(sample), f".gitignore has {line!r}; .dockerignore does not"


def test_compose_single_node():
    c = compose()
    brokers = {n: s for n, s in c["services"].items() if "build" in s
               or str(s.get("image", "")).startswith("spate")}
    # One node: no clustering yet (deploy/README.md), so no file that pretends otherwise.
    assert list(brokers) == ["spate"], brokers
    s = brokers["spate"]
    build = s["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    published = {}
    for p in s["ports"]:
        host_ip, host_port, container_port = str(p).split(":")
        assert host_ip.startswith("127."), f"{p}: publish on loopback"
        published[int(container_port)] = int(host_port)
    assert set(published) == {kafka_port(), admin_port()}
    advertised = s["environment"]["SPATE_ADVERTISED_KAFKA_ADDR"]
    assert port_of(advertised) == published[kafka_port()]
    assert s["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    (vol,) = [v for v in s["volumes"] if v.split(":")[1] == DATA_DIR]
    assert vol.split(":")[0] in c["volumes"], "named volume declared"
    assert any("seccomp" in o for o in s.get("security_opt", [])), "io_uring seccomp note"
    test = s["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1] == f"http://127.0.0.1:{admin_port()}/v1/status/ready"
    # Monitoring profile: the files it mounts exist.
    for name in ("prometheus", "grafana"):
        svc = c["services"][name]
        assert svc["profiles"] == ["monitoring"]
        for v in svc["volumes"]:
            src = v.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name} mounts missing {src}"
    prom_mount = next(v for v in c["services"]["prometheus"]["volumes"]
                      if v.endswith("prometheus.yml:ro"))
    assert (COMPOSE.parent / prom_mount.split(":")[0]).resolve() == PROMETHEUS


def test_prometheus_scrapes_the_admin_port():
    conf = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in conf["scrape_configs"] if j["job_name"] == "spate"]
    assert job.get("metrics_path", "/metrics") == "/metrics" and "/metrics" in admin_paths()
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    services = compose()["services"]
    for t in targets:
        host, port = t.rsplit(":", 1)
        assert int(port) == admin_port()
        assert host in services, f"{t}: scrapes the compose service"


def test_grafana_provisioning_matches_compose():
    ds = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prom = compose()["services"]["prometheus"]
    assert any(p.endswith(":9090") for p in prom["ports"])
    dash = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "spate.yaml").read_text())
    (provider,) = dash["providers"]
    graf = compose()["services"]["grafana"]
    mount = next(v for v in graf["volumes"] if v.split(":")[0].endswith("spate-dashboard.json"))
    target = mount.split(":")[1]
    assert target.rsplit("/", 1)[0] == provider["options"]["path"]
    assert (COMPOSE.parent / mount.split(":")[0]).resolve() == DASHBOARD


def test_k8s_manifests():
    docs = k8s_docs()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Service", "Service", "StatefulSet"], kinds
    sts = statefulset()
    spec = sts["spec"]
    assert spec["replicas"] == 1, "one replica until spated has clustering"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    c = spated_container()
    ports = container_ports(c)
    assert ports == {"kafka": kafka_port(), "admin": admin_port()}

    # Services: a headless one governing the StatefulSet, a client one; both select the pods
    # and target named container ports.
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    headless = services[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    client = next(s for n, s in services.items() if n != spec["serviceName"])
    assert client["spec"].get("clusterIP") != "None"
    for s in services.values():
        assert s["spec"]["selector"].items() <= pod_labels.items()
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in ports and ports[p["targetPort"]] == p["port"]
    assert {p["port"] for p in client["spec"]["ports"]} == {kafka_port()}

    # Probes on the admin API's health paths.
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, get in probes.items():
        assert get["port"] in ("admin", admin_port()), name
        assert get["path"] in admin_paths(), f"{name}: {get['path']} is not served"
    assert probes["readinessProbe"]["path"] == "/v1/status/ready"
    assert probes["livenessProbe"]["path"] == "/v1/status/live"

    # The data volume: PVC template "data" mounted at the config's data_dir.
    (pvc,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[pvc["metadata"]["name"]] == DATA_DIR
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"]

    # The config file: mounted where --config points; its addresses and data dir as above.
    assert c["command"] == ["spated"]
    assert flag_value(c["args"], "--config") == configmap_file_path()
    conf, _ = configmap_config()
    assert conf["data_dir"] == DATA_DIR
    assert port_of(conf["kafka_addr"]) == kafka_port()
    assert port_of(conf["admin_addr"]) == admin_port()
    env = {e["name"]: e for e in c["env"]}
    advertised = env["SPATE_ADVERTISED_KAFKA_ADDR"]["value"]
    assert f".{spec['serviceName']}." in advertised and port_of(advertised) == kafka_port()
    assert advertised.startswith("$(POD_NAME).") and "POD_NAME" in env

    # Security and resources.
    pod_sc = spec["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == image_uid() and pod_sc["fsGroup"] == pod_sc["runAsGroup"]
    assert "seccompProfile" in pod_sc, "io_uring needs an explicit seccomp choice"
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
    res = c["resources"]
    assert res["limits"]["cpu"] and res["limits"]["memory"]
    assert res["requests"] == res["limits"], "Guaranteed QoS (whole cores for the shards)"
    assert str(conf["smp"]) == str(res["limits"]["cpu"]), "one shard per CPU of the limit"

    # Prometheus annotations point at /metrics on the admin port.
    ann = spec["template"]["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == admin_port()
    assert ann["prometheus.io/path"] == "/metrics"


def test_k8s_configmap_uses_only_known_keys():
    """Keys and value types as in deploy/spated.toml (spated rejects unknown keys)."""
    conf, _ = configmap_config()
    known = sample_config()
    for key, value in conf.items():
        assert key in known, f"unknown config key {key}"
        assert type(value) is type(known[key]), f"{key}: {value!r}"


def test_k8s_manifests_match_the_api_types():
    """Where the kubernetes Python client is installed: each manifest round-trips through its
    typed model, so a misspelt or misplaced field (dropped by the model) fails. Not a
    requirement of the suite (kubectl --dry-run=client needs an API server for discovery)."""
    kubernetes = pytest.importorskip("kubernetes")
    api = kubernetes.client.ApiClient()

    def lost(a, b, path=""):
        if isinstance(a, dict):
            out = []
            for k, v in a.items():
                out += [f"{path}.{k}"] if k not in b else lost(v, b[k], f"{path}.{k}")
            return out
        if isinstance(a, list):
            return [x for i, (u, w) in enumerate(zip(a, b)) for x in lost(u, w, f"{path}[{i}]")]
        return [] if str(a) == str(b) else [f"{path}: {a!r} != {b!r}"]

    for doc in k8s_docs():
        version = doc["apiVersion"].split("/")[-1]
        model = api.deserialize(json.dumps(doc), version.capitalize() + doc["kind"],
                                "application/json")
        back = api.sanitize_for_serialization(model)
        assert lost(doc, back) == [], doc["kind"]


def test_dashboard_is_well_formed():
    d = dashboard()
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    rects = []
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for (x, y, w, h, t) in rects:
            overlap = (g["x"] < x + w and x < g["x"] + g["w"]
                       and g["y"] < y + h and y < g["y"] + g["h"])
            assert not overlap, f"{p['title']!r} overlaps {t!r}"
        rects.append((g["x"], g["y"], g["w"], g["h"], p["title"]))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            # Filtered by the instance variable (several nodes, one day).
            assert '$instance' in t["expr"], t["expr"]
    # Every family spated exports is charted.
    assert set(METRIC_FAMILIES) - dashboard_metrics() == set()
    # Latency panels use histogram_quantile over the buckets.
    exprs = " ".join(dashboard_queries())
    assert re.search(r"histogram_quantile\(0\.99, sum by \(api, le\) "
                     r"\(rate\(spate_kafka_request_seconds_bucket", exprs)
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(spate_log_fsync_seconds_bucket" in exprs


# ------------------------------------------------------------------ (b) against spated


@pytest.mark.spate_only
def test_dashboard_metrics_are_exported(broker):
    """Every metric the dashboard queries is in a running spated's /metrics after traffic, and
    the labels the queries use exist on the metrics they query."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from clients import confluent_admin, create

    topic = unique_topic("deploy")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 2, 1)])
    p = Producer({"bootstrap.servers": broker.bootstrap, "log_level": 3})
    for i in range(20):
        p.produce(topic, key=str(i).encode(), value=b"v" * 100, partition=i % 2)
    assert p.flush(15) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "log_level": 3})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got, deadline = 0, time.monotonic() + 15
        while got < 10 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
        assert got == 10
    finally:
        c.close()

    wanted = dashboard_metrics()
    # Partition gauges are published once a second: poll briefly before judging.
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(broker.admin_port)
        exported = {base_name(s.name) for s in samples}
        missing = sorted(wanted - exported)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert missing == [], f"the dashboard queries metrics spated does not export: {missing}"

    labels: dict[str, set[str]] = {}
    for s in samples:
        labels.setdefault(base_name(s.name), set()).update(s.labels)
    for expr in dashboard_queries():
        used = query_labels(expr) - SCRAPE_LABELS
        have = set().union(*(labels[base_name(m)] for m in METRIC_RE.findall(expr)))
        assert used <= have, f"{expr}: labels {sorted(used - have)} are not on its metrics"
    assert any(s.labels.get("topic") == topic for s in samples
               if s.name == "spate_partition_high_watermark")


# ------------------------------------------------------------------ (c) flags spated accepts


@pytest.mark.spate_only
def test_deploy_flags_are_spated_flags():
    """`docker build` cannot run here; instead the flags the image's ENTRYPOINT and the
    StatefulSet pass are flags spated accepts, and the SPATE_* variables set are ones it
    reads."""
    help_text = spated_help()
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", help_text))
    env_known = set(re.findall(r"\[env: (SPATE_[A-Z_]+)=", help_text))
    ep = entrypoint()
    k8s_args = spated_container()["args"]
    for argv in (ep[1:], k8s_args):
        unknown = set(flags_of(argv)) - known
        assert not unknown, f"spated --help does not list {sorted(unknown)}"
        # clap parses the flags and their values (then --help exits 0 without starting).
        p = subprocess.run([str(spate_harness.SPATE_BIN), *argv, "--help"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, f"spated {shlex.join(argv)}: {p.stderr}"
    used_env = set(compose()["services"]["spate"]["environment"])
    used_env |= {e["name"] for e in spated_container()["env"] if e["name"].startswith("SPATE_")}
    used_env |= {m for e in instructions(runtime_stage(), "ENV")
                 for m in re.findall(r"(SPATE_[A-Z_]+)=", e)}
    assert used_env - env_known == set(), f"spated reads no {sorted(used_env - env_known)}"


class _ConfigFileBroker(Broker):
    """The harness's broker (loopback addresses, temp data dir, its flags) plus --config FILE,
    the file holding `config_text`."""

    def __init__(self, config_text: str, **kw):
        super().__init__(**kw)
        self.config = self.work_dir / "spated.toml"
        self.config.write_text(config_text)

    def _command(self) -> list[str]:
        return super()._command() + ["--config", str(self.config)]


@pytest.mark.spate_only
def test_k8s_config_is_one_spated_starts_with():
    """spated starts with the ConfigMap's spated.toml (unknown keys and out-of-range values
    would stop it); the harness's loopback flags override the addresses and data dir."""
    _, text = configmap_config()
    b = _ConfigFileBroker(text, name="deploy-k8s-config")
    try:
        b.start()
        status, body = http_get(b.admin_port, "/v1/status/ready")
        assert status == 200, body
        b.stop()
    except BaseException:
        b.cleanup(keep=True)
        raise
    b.cleanup()
