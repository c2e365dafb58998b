"""The monitoring kit holds together: metrics, alert rules, dashboard and compose file.

Each artefact names things defined elsewhere (metric names, view names, service names,
ports, paths). Nothing fails loudly when one of those drifts — Grafana shows an empty
panel, an alert never fires — so these tests cross-check every reference.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from uploaderd.config.settings import load_daemon_config
from uploaderd.ledger.store import JobStateCount
from uploaderd.observe import metrics

REPO = Path(__file__).parents[2]
MONITORING = REPO / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
RULES = PROMETHEUS / "uploaderd-rules.yml"
RULE_TESTS = PROMETHEUS / "uploaderd-rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "uploaderd.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"
VIEWS_SQL = REPO / "sql" / "migrations" / "0003_grafana_views.sql"
COMPOSE = REPO / "docker-compose.yml"

ALLOWED_LABELS = {"job", "outcome", "source", "op", "code", "state"}
# Series Prometheus itself or prometheus_client's default collectors provide.
FOREIGN_SERIES = {"up", "process_start_time_seconds"}
METRIC = re.compile(r"\b(uploaderd_[a-z0-9_]+|up|process_start_time_seconds)\b")
GiB = 1024**3


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def uploaderd_series() -> set[str]:
    """Every sample name uploaderd exports (uploaderd_x_total, _bucket, _info, ...)."""
    return {name for name in REGISTRY._names_to_collectors if name.startswith("uploaderd_")}


def views() -> set[str]:
    return set(re.findall(r"CREATE VIEW (grafana_\w+)", VIEWS_SQL.read_text()))


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # `./dev test` installs it; only a bare pytest run lacks it
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


# --- metrics -------------------------------------------------------------------------------

CONTRACT = {
    "uploaderd_files_discovered_total": {"job", "source"},
    "uploaderd_uploads_total": {"job", "outcome"},
    "uploaderd_upload_bytes_total": {"job"},
    "uploaderd_upload_duration_seconds_bucket": {"job", "le"},
    "uploaderd_upload_size_bytes_bucket": {"job", "le"},
    "uploaderd_queue_files": {"job", "state"},
    "uploaderd_queue_oldest_pending_age_seconds": {"job"},
    "uploaderd_last_success_timestamp_seconds": {"job"},
    "uploaderd_retry_sweeps_total": set(),
    "uploaderd_trigger_requests_total": {"job", "outcome"},
    "uploaderd_s3_requests_total": {"op", "code"},
    "uploaderd_db_up": set(),
    "uploaderd_db_connections": set(),
    "uploaderd_db_server_changes_total": set(),
    "uploaderd_discovery_leading": {"job"},
    "uploaderd_config_reload_success": set(),
    "uploaderd_job_files_not_loaded": set(),
    "uploaderd_watches": {"job"},
    "uploaderd_watch_errors_total": {"job"},
    "uploaderd_destination_paused": {"job", "op"},
    "uploaderd_destination_misconfigured": {"job"},
    "uploaderd_repairs_total": {"job"},
    "uploaderd_build_info": {"version"},
}


def test_every_contract_metric_exists_with_its_labels_only() -> None:
    families = {f.name: f for f in REGISTRY.collect() if f.name.startswith("uploaderd_")}
    assert uploaderd_series() >= set(CONTRACT)
    for name, labels in CONTRACT.items():
        collector = REGISTRY._names_to_collectors[name]
        names = set(getattr(collector, "_labelnames", ()))
        if name.endswith("_bucket"):
            names.add("le")
        if name == "uploaderd_build_info":
            names = set(families["uploaderd_build"].samples[0].labels)
        assert names == labels, name
        assert names - {"le", "version"} <= ALLOWED_LABELS, name


def test_histogram_buckets_reach_an_hour_and_many_gib() -> None:
    assert max(metrics.upload_duration._upper_bounds[:-1]) >= 3600
    assert max(metrics.upload_size._upper_bounds[:-1]) >= 256 * GiB


def test_metrics_listen_on_loopback_by_default() -> None:
    assert load_daemon_config(None, env={}).metrics_listen == "127.0.0.1:9464"


def _queue_value(job: str, state: str) -> float | None:
    return REGISTRY.get_sample_value("uploaderd_queue_files", {"job": job, "state": state})


def test_queue_gauges_reset_states_that_drained_and_drop_vanished_jobs() -> None:
    now = datetime.now(UTC)
    metrics.set_queue(
        [
            JobStateCount("qa", "pending", 3, 30, 120.0, None),
            JobStateCount("qb", "uploaded", 1, 10, 5.0, now),
        ]
    )
    assert _queue_value("qa", "pending") == 3 and _queue_value("qa", "failed") == 0
    assert (
        REGISTRY.get_sample_value("uploaderd_queue_oldest_pending_age_seconds", {"job": "qa"})
        == 120
    )
    metrics.set_queue([JobStateCount("qa", "uploaded", 3, 30, 60.0, now)])
    assert _queue_value("qa", "pending") == 0 and _queue_value("qa", "uploaded") == 3
    assert (
        REGISTRY.get_sample_value("uploaderd_queue_oldest_pending_age_seconds", {"job": "qa"}) == 0
    )
    assert _queue_value("qb", "uploaded") is None, "a job gone from the ledger loses its series"
    metrics.set_queue([])


def test_declared_jobs_export_zeroed_counters() -> None:
    metrics.declare_jobs(["fresh-job"])
    for outcome in ("uploaded", "failed"):
        assert (
            REGISTRY.get_sample_value(
                "uploaderd_uploads_total", {"job": "fresh-job", "outcome": outcome}
            )
            == 0
        )
    assert (
        REGISTRY.get_sample_value(
            "uploaderd_files_discovered_total", {"job": "fresh-job", "source": "scan"}
        )
        == 0
    )


# --- alert rules ---------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "UploaderdDown",
    "UploaderdTargetMissing",
    "UploaderdBacklogOld",
    "UploaderdNoSuccessWhilePending",
    "UploaderdUploadFailuresRising",
    "UploaderdFilesFailed",
    "UploaderdS3Throttled",
    "UploaderdRescanFoundMissedFiles",
    "UploaderdConfigReloadFailed",
    "UploaderdDestinationPaused",
    "UploaderdDestinationMisconfigured",
    "UploaderdDatabaseDown",
    "UploaderdDatabaseFailedOver",
}


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_rules_cover_the_required_alerts_on_existing_metrics() -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in rules()}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, expr in alerts.items():
        used = set(METRIC.findall(expr))
        assert used, name
        assert used - FOREIGN_SERIES <= uploaderd_series(), (name, used)


def test_every_rule_has_a_firing_and_a_quiet_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert firing == names and quiet == names


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_config(promtool: str, tmp_path: Path) -> None:
    # The config names the rules by their path inside the container: point it at the repo's.
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- dashboard -----------------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def provisioned_types() -> set[str]:
    sources = load_yaml(PROVISIONING / "datasources" / "uploaderd.yaml")["datasources"]
    return {source["type"] for source in sources}


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_every_dashboard_query_names_an_existing_view_or_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    seen_views: set[str] = set()
    seen_metrics: set[str] = set()
    queried = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(queried) >= 20
    for panel in queried:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            if "rawSql" in target:
                named = set(re.findall(r"\bgrafana_\w+", target["rawSql"]))
                assert named and named <= views(), (panel["title"], named)
                seen_views |= named
            else:
                named = set(METRIC.findall(target["expr"]))
                assert named and named - FOREIGN_SERIES <= uploaderd_series(), panel["title"]
                seen_metrics |= named
    variable = variables(dashboard)["job"]["query"]["query"]
    assert set(METRIC.findall(variable)) <= uploaderd_series()
    assert seen_views == views(), "every view has a panel"
    # The ones the issue asks for: backlog and its age, throughput, errors, pauses.
    assert {
        "uploaderd_queue_files",
        "uploaderd_queue_oldest_pending_age_seconds",
        "uploaderd_upload_bytes_total",
        "uploaderd_uploads_total",
        "uploaderd_s3_requests_total",
        "uploaderd_destination_paused",
    } <= seen_metrics


# A datasource is named through a variable, never by the uid one Grafana gave it, so the
# JSON imports into any Grafana (which asks for each of its __inputs) and provisioning
# resolves the variables to the datasources of their type.
DATASOURCE_VARIABLE = re.compile(r"\$\{(DS_[A-Z]+)\}")


def test_every_datasource_is_a_variable_of_its_type() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    declared = variables(dashboard)
    inputs = {source["name"]: source for source in dashboard["__inputs"]}
    users = [p for p in panels(dashboard) if p["type"] != "row"]
    references = [(p["title"], p["datasource"]) for p in users]
    references += [(p["title"], t["datasource"]) for p in users for t in p["targets"]]
    references += [(v["name"], v["datasource"]) for v in declared.values() if "datasource" in v]
    used = set()
    for where, source in references:
        name = DATASOURCE_VARIABLE.fullmatch(source["uid"])
        assert name, (where, source)
        variable = declared[name.group(1)]
        assert (variable["type"], variable["query"]) == ("datasource", source["type"]), where
        assert inputs[name.group(1)]["pluginId"] == source["type"], where
        used.add(name.group(1))
    assert used == set(inputs) == {"DS_PROMETHEUS", "DS_POSTGRES"}
    # In compose, provisioning has a datasource of every type the variables ask for.
    assert {declared[name]["query"] for name in used} <= provisioned_types()
    for source in load_yaml(PROVISIONING / "datasources" / "uploaderd.yaml")["datasources"]:
        assert source["uid"] not in DASHBOARD.read_text(), source["uid"]


# The grafana_* views name their columns by what they hold (docs/observability.md):
# *bytes in bytes, *_seconds in seconds, *_at (and the time column) timestamps. Text
# columns need no unit; every other column is a count or an identifier.
TEXT_COLUMNS = {
    "job",
    "state",
    "reason",
    "host",
    "kind",
    "last_error",
    "group_key",
    "closed_reason",
    "trigger_state",
    "metric",
}
IDENTIFIERS = {"session_id", "trigger_id", "last_status"}


def expected_units(column: str) -> set[str]:
    if column.endswith("bytes"):
        return {"bytes"}
    if column.endswith("_seconds"):
        return {"s"}
    if column == "time" or column.endswith("_at") or column in ("last_seen", "paused_until"):
        return {"dateTimeAsIso", "dateTimeFromNow"}
    if column in IDENTIFIERS:
        return {"none"}
    if column == "paused":
        return {"bool_yes_no"}
    return {"short", "locale", "none"}


def sql_columns(sql: str) -> list[str]:
    """The output column names of a panel's ``SELECT a, b AS c, ... FROM``."""
    select = sql[sql.index("SELECT") + len("SELECT") : sql.index("FROM")]
    return [re.split(r"\s+AS\s+|\.", part.strip())[-1] for part in select.split(",")]


def field_units(panel: dict[str, Any]) -> dict[str, str]:
    """Units set by name in the panel's overrides."""
    return {
        override["matcher"]["options"]: prop["value"]
        for override in panel["fieldConfig"]["overrides"]
        if override["matcher"]["id"] == "byName"
        for prop in override["properties"]
        if prop["id"] == "unit"
    }


def test_every_numeric_field_has_a_unit() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    tables = 0
    for panel in (p for p in panels(dashboard) if p["type"] != "row"):
        default = panel["fieldConfig"]["defaults"].get("unit")
        by_name = field_units(panel)
        for target in panel["targets"]:
            if "rawSql" not in target:
                assert default, panel["title"]  # one unit for every series of the panel
                continue
            for column in sql_columns(target["rawSql"]):
                if column in TEXT_COLUMNS or (column == "time" and panel["type"] != "table"):
                    continue
                # A table mixes bytes, seconds and counts: each column names its own unit.
                unit = (
                    by_name.get(column)
                    if panel["type"] == "table"
                    else (by_name.get(column, default))
                )
                assert unit in expected_units(column), (panel["title"], column, unit)
        tables += panel["type"] == "table"
    assert tables == 6


def test_prometheus_panels_show_seconds_and_bytes_as_such() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in (p for p in panels(dashboard) if p["type"] != "row"):
        exprs = [t["expr"] for t in panel["targets"] if "expr" in t]
        names = {name for expr in exprs for name in METRIC.findall(expr)}
        unit = panel["fieldConfig"]["defaults"]["unit"]
        if names and all("_seconds" in n and "timestamp" not in n for n in names):
            assert unit == "s", panel["title"]
        if names and all(n.endswith("_bytes_total") for n in names):  # rate of a byte count
            assert unit in ("Bps", "binBps"), panel["title"]
        elif names and all("_bytes" in n for n in names):  # sizes, quantiles of sizes
            assert unit == "bytes", panel["title"]


def test_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    provider = load_yaml(PROVISIONING / "dashboards" / "uploaderd.yaml")["providers"][0]
    mounts = dict(
        volume.split(":")[:2][::-1]
        for volume in load_yaml(COMPOSE)["services"]["grafana"]["volumes"]
    )
    host = mounts[provider["options"]["path"]]
    assert (REPO / host / DASHBOARD.name).is_file()


# --- docker-compose.yml --------------------------------------------------------------------


@pytest.fixture
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path → repo path of the service's bind mounts from the checkout."""
    found = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("./"):
            found[container] = host
    return found


def test_compose_has_the_whole_picture(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "seaweedfs",
        "seaweedfs-init",
        "uploaderd-migrate",
        "uploaderd",
        "prometheus",
        "alertmanager",
        "grafana",
    } <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./"):
                assert (REPO / host).exists(), (name, host)
            elif not host.startswith("${"):
                assert host in compose["volumes"], (name, host)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for dependency in service.get("depends_on", []):
            assert dependency in services, (name, dependency)


def test_prometheus_scrapes_uploaderd_and_loads_the_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    [scrape] = config["scrape_configs"]
    assert scrape["job_name"] == "uploaderd", 'the rules match up{job="uploaderd"}'
    assert scrape["honor_labels"] is True, "keeps the daemon's own job label"
    [target] = scrape["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services
    daemon_config = bind_mounts(services[host])["/etc/uploaderd/uploaderd.yaml"]
    listen = load_yaml(REPO / daemon_config)["metrics"]["listen"]
    assert listen == f"0.0.0.0:{port}", "reachable from the prometheus container"
    assert any(p.endswith(f":{port}") for p in services[host]["ports"])
    mounts = bind_mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "./monitoring/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        assert (REPO / mounts[rule_file]).resolve() == RULES.resolve()


def test_grafana_datasources_reach_the_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = bind_mounts(services["grafana"])
    assert (REPO / mounts["/etc/grafana/provisioning"]).resolve() == PROVISIONING.resolve()
    for source in load_yaml(PROVISIONING / "datasources" / "uploaderd.yaml")["datasources"]:
        host = source["url"].removeprefix("http://").split(":")[0]
        assert host in services, source["name"]
    reader = services["grafana-reader"]
    assert "/grafana_reader.sql" in bind_mounts(reader)
    assert reader["depends_on"]["uploaderd"]["condition"] == "service_healthy", (
        "the views exist only once uploaderd has migrated"
    )


def test_docs_describe_and_grant_every_view() -> None:
    docs = (REPO / "docs" / "observability.md").read_text()
    grant = docs[docs.index("GRANT SELECT ON grafana_") :]
    grant = grant[: grant.index(";")]
    for view in views():
        assert f"### `{view}`" in docs and view in grant, view
