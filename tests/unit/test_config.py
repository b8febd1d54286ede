"""Settings: the documented table matches the declarations; each variable's coercion and what a bad value gets."""

from __future__ import annotations

import os
import re
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from receiver.config import SETTING_NAMES, ConfigError, Settings, Var, configuration_table, env_var

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
VARS: dict[str, Var] = {f.name: env_var(f) for f in fields(Settings)}


def by_kind(kind: str) -> list[Var]:
    return [v for v in VARS.values() if v.kind == kind]


def table_rows(text: str) -> dict[str, list[str]]:
    """Variable -> [type, default, description] for every row of the markdown table in `text`."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            name, *cells = (c.strip() for c in line.strip().strip("|").split("|"))
            rows[name.strip("`")] = cells
    return rows


def error_of(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as e:
        Settings.from_env(environ)
    return str(e.value)


# --- the declarations and their documentation ---


def test_docs_table_matches_settings() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented, declared = table_rows(text), table_rows(configuration_table())
    assert sorted(documented) == sorted(declared), "variables differ: regenerate docs/configuration.md"
    for name, (type_, default, _doc) in declared.items():
        assert documented[name][:2] == [type_, default], f"{name}: type or default differs"
    assert configuration_table() in text, "docs/configuration.md's table is stale: regenerate it"


def test_every_field_has_exactly_one_variable_and_names_are_unique() -> None:
    names = [v.name for v in VARS.values()]
    assert list(VARS) == list(SETTING_NAMES)
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"(RECEIVER|ALIBABA_CLOUD)_[A-Z0-9_]+", name), name
    for v in VARS.values():
        assert v.doc and "|" not in v.doc and "\n" not in v.doc, v.name


def test_each_kind_fits_its_field_type() -> None:
    expected: dict[str, tuple[object, ...]] = {
        "str": (str, str | None), "path": (Path,), "choice": (str,), "int": (int,), "float": (float,),
        "bool": (bool,), "csv": (tuple[str, ...],), "lower_csv": (tuple[str, ...],),
        "int_csv": (tuple[int, ...],), "endpoint_map": (dict[str, str],),
        "float_csv": (tuple[float, ...],), "duration": (float,),
    }
    hints = typing.get_type_hints(Settings)
    for field_name, v in VARS.items():
        assert hints[field_name] in expected[v.kind], f"{v.name}: kind {v.kind} for {hints[field_name]}"


def test_documented_defaults_read_back_as_the_defaults() -> None:
    defaults = {f.name: f.default for f in fields(Settings)}
    for field_name, v in VARS.items():
        label = table_rows(configuration_table())[v.name][1]
        if not label.startswith("`") or "<" in label:  # unset, empty, CPU count, derived from the data dir
            continue
        got = getattr(Settings.from_env({v.name: label.strip("`")}), field_name)
        assert got == defaults[field_name], v.name


def test_derived_and_computed_defaults() -> None:
    s = Settings.from_env({"RECEIVER_DATA_DIR": "/srv/receiver"})
    assert s.data_dir == Path("/srv/receiver")
    assert s.database_url == "sqlite:////srv/receiver/receiver.db" and s.is_sqlite
    assert s.thumbnail_store == "file:///srv/receiver/thumbnails"
    assert Settings().workers == (os.cpu_count() or 2)
    assert Settings.from_env({"RECEIVER_DATABASE_URL": "postgresql+psycopg://db/r"}).is_sqlite is False


# --- coercions ---


def test_empty_string_means_unset() -> None:
    assert Settings.from_env({v.name: "" for v in VARS.values()}) == Settings()


def test_strings_are_kept_verbatim() -> None:
    s = Settings.from_env({"RECEIVER_CALLBACK_TOKEN": " t0k ", "RECEIVER_LOG_LEVEL": "debug",
                           "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI"})
    assert (s.callback_token, s.log_level, s.access_key_id) == (" t0k ", "debug", "LTAI")


@pytest.mark.parametrize("v", by_kind("int"), ids=lambda v: v.name)
def test_int_variables(v: Var) -> None:
    floor = v.minimum if v.minimum is not None else 0
    field_name = next(n for n, x in VARS.items() if x is v)
    assert getattr(Settings.from_env({v.name: str(floor + 7)}), field_name) == floor + 7
    assert error_of({v.name: "12x"}) == f"{v.name} must be an integer, got '12x'"
    assert error_of({v.name: "1.5"}) == f"{v.name} must be an integer, got '1.5'"
    if v.minimum is not None:
        assert getattr(Settings.from_env({v.name: str(floor)}), field_name) == floor
        assert error_of({v.name: str(floor - 1)}) == f"{v.name} must be >= {floor}, got {floor - 1}"


@pytest.mark.parametrize("v", by_kind("float"), ids=lambda v: v.name)
def test_float_variables(v: Var) -> None:
    field_name = next(n for n, x in VARS.items() if x is v)
    assert getattr(Settings.from_env({v.name: "2.5"}), field_name) == 2.5
    assert getattr(Settings.from_env({v.name: "3"}), field_name) == 3.0
    assert error_of({v.name: "soon"}) == f"{v.name} must be a number, got 'soon'"


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("TRUE", True), (" yes ", True), ("on", True),
                                               ("0", False), ("False", False), ("no", False), ("off", False),
                                               (" ", False)])
def test_bool(raw: str, expected: bool) -> None:
    assert Settings.from_env({"RECEIVER_DISCOVER_JOBS": raw}).discover_jobs is expected


def test_bad_bool() -> None:
    assert error_of({"RECEIVER_DISCOVER_JOBS": "maybe"}) == \
        "RECEIVER_DISCOVER_JOBS must be a boolean (1/0, true/false), got 'maybe'"


def test_lists() -> None:
    s = Settings.from_env({"RECEIVER_API_KEYS": " k1, ,k2 ,", "RECEIVER_CORS_ORIGINS": "*",
                           "RECEIVER_CALLBACK_AUTH_KEYS": "Old,New",
                           "RECEIVER_OSS_ALLOWED_ENDPOINTS": "*.Aliyuncs.com, OSS.local"})
    assert s.api_keys == ("k1", "k2") and s.url_signing_secret == "k1"
    assert s.cors_origins == ("*",)
    assert s.callback_auth_keys == ("Old", "New")  # keys are secrets: case kept
    assert s.oss_allowed_endpoints == ("*.aliyuncs.com", "oss.local")


def test_thumbnail_widths() -> None:
    assert Settings.from_env({"RECEIVER_THUMBNAIL_WIDTHS": "640, 8,4096"}).thumbnail_widths == (640, 8, 4096)
    assert error_of({"RECEIVER_THUMBNAIL_WIDTHS": "640,big"}) == \
        "RECEIVER_THUMBNAIL_WIDTHS must be an integer, got 'big'"
    for bad in ("4", "640,5000", ","):
        assert error_of({"RECEIVER_THUMBNAIL_WIDTHS": bad}) == \
            "RECEIVER_THUMBNAIL_WIDTHS must be a list of widths between 8 and 4096"


def test_endpoint_map() -> None:
    s = Settings.from_env({"RECEIVER_OSS_ENDPOINT_MAP": " OSS-cn-shanghai.Aliyuncs.com = http://127.0.0.1:9000 ,"
                                                        "b=https://x/y=z"})
    assert s.oss_endpoint_map == {"oss-cn-shanghai.aliyuncs.com": "http://127.0.0.1:9000", "b": "https://x/y=z"}


@pytest.mark.parametrize("item", ["nohost", "=http://x", "h=", " = "])
def test_bad_endpoint_map_item(item: str) -> None:
    assert error_of({"RECEIVER_OSS_ENDPOINT_MAP": f"a=b,{item}"}) == \
        f"RECEIVER_OSS_ENDPOINT_MAP items must be host=url, got {item.strip()!r}"


@pytest.mark.parametrize("v", by_kind("choice"), ids=lambda v: v.name)
def test_choices(v: Var) -> None:
    field_name = next(n for n, x in VARS.items() if x is v)
    extra = {"RECEIVER_BROKER_URL": "redis://127.0.0.1:6379/0"}
    for choice in v.choices:
        assert getattr(Settings.from_env({v.name: f" {choice.upper()} "} | extra), field_name) == choice
    assert error_of({v.name: "Bogus"}) == f"{v.name} must be {' or '.join(v.choices)}, got 'bogus'"
    with pytest.raises(ConfigError, match=v.name):
        Settings(**{field_name: "bogus"})


def test_celery_needs_a_broker() -> None:
    assert error_of({"RECEIVER_QUEUE": "celery"}) == "RECEIVER_QUEUE=celery needs RECEIVER_BROKER_URL"
    s = Settings.from_env({"RECEIVER_QUEUE": "Celery", "RECEIVER_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert (s.queue, s.broker_url) == ("celery", "redis://127.0.0.1:6379/0")


def test_variables_added_for_fields_that_had_none() -> None:
    s = Settings.from_env({"RECEIVER_RETRY_MAX_SECONDS": "30", "RECEIVER_ICE_TIMEOUT_MS": "2000",
                           "RECEIVER_OSS_TIMEOUT_SECONDS": "2.5", "RECEIVER_JOB_NEGATIVE_CACHE_SECONDS": "5"})
    assert (s.retry_max_seconds, s.ice_timeout_ms, s.oss_timeout_seconds, s.job_negative_cache_seconds) == \
        (30.0, 2000, 2.5, 5.0)


def test_with_replaces_and_revalidates() -> None:
    s = Settings().with_(max_attempts=3)
    assert s.max_attempts == 3 and Settings().max_attempts == 8
    with pytest.raises(ConfigError, match="RECEIVER_BROKER_URL"):
        s.with_(queue="celery")


def test_webhook_settings_parse_schedules_and_durations() -> None:
    s = Settings.from_env({"RECEIVER_WEBHOOK_RETRY_SCHEDULE": "0.2, 0.2,0.5", "RECEIVER_WEBHOOK_DISABLE_AFTER": "12h",
                           "RECEIVER_WEBHOOK_ALLOW_PRIVATE": "1"})
    assert s.webhook_retry_schedule == (0.2, 0.2, 0.5) and s.webhook_disable_after == 43200.0
    assert s.webhook_allow_private is True
    assert Settings.from_env({"RECEIVER_WEBHOOK_DISABLE_AFTER": "3600"}).webhook_disable_after == 3600.0
    assert Settings().webhook_disable_after == 5 * 86400
    for bad in ("5y", "-1", "0", "nan", "inf", "d", "1e999"):
        with pytest.raises(ConfigError, match="RECEIVER_WEBHOOK_DISABLE_AFTER"):
            Settings.from_env({"RECEIVER_WEBHOOK_DISABLE_AFTER": bad})
    for bad in ("5,x", "-1", "inf", ","):
        with pytest.raises(ConfigError, match="RECEIVER_WEBHOOK_RETRY_SCHEDULE"):
            Settings.from_env({"RECEIVER_WEBHOOK_RETRY_SCHEDULE": bad})
