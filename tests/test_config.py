"""Settings come from BACKBONE_* variables and an optional TOML file, validated with named errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from backbone.cli import app
from backbone.config import ConfigError, load_settings, mask_url_password


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)


def test_defaults_are_embedded() -> None:
    s = load_settings()
    assert s.embedded_kafka and s.embedded_clickhouse
    assert s.topic_partitions == 6
    assert s.missions_file.is_file()


def test_env_overrides_and_false_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", " kafka-1:9092,kafka-2:9092 ")
    monkeypatch.setenv("BACKBONE_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD", "s3cret")
    s = load_settings()
    assert s.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert not s.embedded_kafka
    assert s.topic_partitions == 12
    assert "s3cret" not in repr(s) and s.kafka_sasl_password.get_secret_value() == "s3cret"


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_TOPIC_PARTITIONS", "zero")
    monkeypatch.setenv("BACKBONE_CLOCK", "sundial")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "BACKBONE_TOPIC_PARTITIONS" in str(err.value)
    assert "BACKBONE_CLOCK" in str(err.value)


def test_unknown_variable_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "backbone.toml"
    cfg.write_text("topic_partitions = 3\nno_such_setting = 1\n")
    monkeypatch.setenv("BACKBONE_CONFIG_FILE", str(cfg))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "unknown key 'no_such_setting'" in str(err.value)


def test_config_file_and_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "backbone.toml"
    cfg.write_text('topic_partitions = 3\nclickhouse_database = "from_file"\n')
    monkeypatch.setenv("BACKBONE_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("BACKBONE_TOPIC_PARTITIONS", "4")
    s = load_settings()
    assert s.topic_partitions == 4  # environment wins over the file
    assert s.clickhouse_database == "from_file"


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BACKBONE_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings()


def test_a_config_file_that_is_not_toml_names_the_file_and_the_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "backbone.toml"
    cfg.write_text("topic_partitions = 3\n[[[bad\n")
    monkeypatch.setenv("BACKBONE_CONFIG_FILE", str(cfg))
    with pytest.raises(ConfigError, match=r"BACKBONE_CONFIG_FILE=.*backbone.toml: not valid TOML: .*line 2"):
        load_settings()
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2 and "not valid TOML" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BACKBONE_ALERTMANAGER_URL", "notaurl"),
        ("BACKBONE_ALERTMANAGER_URL", "am:9093"),
        ("BACKBONE_ALERTMANAGER_URL", "http://am:99999"),
        ("BACKBONE_BOARD_URL", "javascript:alert(1)"),
        ("BACKBONE_BOARD_URL", "ftp://board"),
    ],
)
def test_alertmanager_and_board_urls_must_be_http(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """QA: a typo was accepted and then held every alert in the forwarder's retries."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_good_alertmanager_and_board_urls_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_ALERTMANAGER_URL", " https://am.example:9093/ ")
    monkeypatch.setenv("BACKBONE_BOARD_URL", "https://board.example/track")
    s = load_settings()
    assert (s.alertmanager_url, s.board_url) == ("https://am.example:9093/", "https://board.example/track")


@pytest.mark.parametrize("value", ["999.1.1.1", "", "bad host", "host_name", "10.0.0"])
def test_a_metrics_address_that_cannot_be_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """QA: ``999.1.1.1`` was accepted, and every metrics endpoint then failed to bind at start."""
    monkeypatch.setenv("BACKBONE_METRICS_ADDRESS", value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == (
        f"invalid configuration: BACKBONE_METRICS_ADDRESS: {value!r} is not an IP address or host name "
        "to bind to (e.g. 127.0.0.1, 0.0.0.0, ::)"
    )


@pytest.mark.parametrize("value", ["0.0.0.0", "127.0.0.1", "::", "::1", "localhost", "metrics-1.internal"])
def test_metrics_addresses_that_can_be_bound_are_kept(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BACKBONE_METRICS_ADDRESS", f" {value} ")
    assert load_settings().metrics_address == value


def test_cli_reports_bad_config_with_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_TOPIC_PARTITIONS", "-1")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2
    assert "BACKBONE_TOPIC_PARTITIONS" in result.output


def test_cli_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD", "hunter2")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert "hunter2" not in result.output


def test_cli_masks_passwords_inside_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", "http://writer:pa55word@clickhouse:8123/backbone")
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_PASSWORD", "other-secret")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert "pa55word" not in result.output and "other-secret" not in result.output
    assert "http://writer:**********@clickhouse:8123/backbone" in result.output


def test_cli_masks_passwords_in_url_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA pass 5: clickhouse-connect takes ``?password=``, and `backbone config` printed it."""
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", "http://clickhouse:8123/backbone?password=qpw1&secure=0")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0 and "qpw1" not in result.output
    assert "http://clickhouse:8123/backbone?password=**********&secure=0" in result.output
    assert "BACKBONE_CHDB" not in result.output  # an embedded path is shown exactly as written
    assert mask_url_password("chdb:///var/lib/backbone/chdb") == "chdb:///var/lib/backbone/chdb"


def test_two_components_on_one_port_are_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA pass 5: the sink's metrics on the board's port passed `backbone config`, then `up` died
    with a traceback in the sink's log."""
    monkeypatch.setenv("BACKBONE_BOARD_PORT", "18050")
    monkeypatch.setenv("BACKBONE_SINK_METRICS_PORT", "18050")
    with pytest.raises(
        ConfigError, match="BACKBONE_BOARD_PORT and BACKBONE_SINK_METRICS_PORT are both 18050"
    ):
        load_settings()
    monkeypatch.setenv("BACKBONE_SINK_METRICS_PORT", "0")  # 0: any free port, never a clash
    monkeypatch.setenv("BACKBONE_FORWARDER_METRICS_PORT", "0")
    assert load_settings().board_port == 18050
    with pytest.raises(ConfigError, match="BACKBONE_PROMETHEUS_PORT and BACKBONE_ALERTMANAGER_PORT"):
        load_settings(prometheus_port=9999, alertmanager_port=9999)


def test_alerting_ports_are_settings_and_reach_the_stack_and_the_forwarder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA pass 5: Prometheus, Alertmanager and the forwarder sat on fixed ports, so two `up` on one
    host collided (and `up` did not say so)."""
    from alerting.stack import JOB_FORWARDER, alertmanager_url_for, stack_for_settings
    from backbone.config import processor_metrics_port

    monkeypatch.setenv("BACKBONE_PROMETHEUS_PORT", "19090")
    monkeypatch.setenv("BACKBONE_ALERTMANAGER_PORT", "19093")
    monkeypatch.setenv("BACKBONE_FORWARDER_METRICS_PORT", "9467")
    settings = load_settings()
    stack = stack_for_settings(settings, workers=2)
    assert (stack.prometheus_port, stack.alertmanager_port) == (19090, 19093)
    assert stack.scrape_targets[JOB_FORWARDER] == ["127.0.0.1:9467"]
    assert alertmanager_url_for(settings) == "http://127.0.0.1:19093"
    assert processor_metrics_port(settings, 2) == 9466  # 9465 is the sink's; 9466 is free now


def test_the_board_url_follows_the_board_port_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA pass 5: BACKBONE_BOARD_PORT alone left alert links pointing at :8050."""
    assert load_settings().board_url == "http://127.0.0.1:8050"
    monkeypatch.setenv("BACKBONE_BOARD_PORT", "18051")
    assert load_settings().board_url == "http://127.0.0.1:18051"
    monkeypatch.setenv("BACKBONE_BOARD_URL", "https://board.example.gov.pk")
    assert load_settings().board_url == "https://board.example.gov.pk"


def test_unknown_environment_variables_are_named_not_silently_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKBONE_BOARD_PROT", "8051")  # a typo
    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD_FILE", "/dev/null")  # a secret file: known
    monkeypatch.setenv("BACKBONE_IMAGE_TAG", "v1")  # docker-compose.yml's own
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert "warning: BACKBONE_BOARD_PROT is not a setting" in result.output
    assert "BACKBONE_IMAGE_TAG is not" not in result.output and "PASSWORD_FILE is not" not in result.output


def test_a_config_file_key_written_as_a_variable_says_how_keys_are_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "backbone.toml"
    cfg.write_text("BACKBONE_BOARD_PORT = 8051\n")
    monkeypatch.setenv("BACKBONE_CONFIG_FILE", str(cfg))
    with pytest.raises(ConfigError, match="unknown key 'BACKBONE_BOARD_PORT'.*lower case without BACKBONE_"):
        load_settings()


def test_clickhouse_credentials_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials given as settings reach clickhouse-connect without living in the URL."""
    import clickhouse_connect

    from sinks.client import open_client

    seen: dict[str, object] = {}

    class Refused(Exception):
        pass

    def fake_get_client(**kwargs: object) -> None:
        seen.update(kwargs)
        raise Refused

    monkeypatch.setattr(clickhouse_connect, "get_client", fake_get_client)
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_URL", "http://clickhouse:8123")
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_USERNAME", "writer")
    monkeypatch.setenv("BACKBONE_CLICKHOUSE_PASSWORD", "s3cret")
    with pytest.raises(Refused):
        open_client(load_settings())
    assert seen == {"dsn": "http://clickhouse:8123", "username": "writer", "password": "s3cret"}


def test_readme_configuration_table_is_current() -> None:
    """The README's table is `backbone config --markdown`: regenerate it when a setting changes."""
    from backbone.config import REPO_ROOT, settings_markdown

    assert settings_markdown() in (REPO_ROOT / "README.md").read_text()
