"""`footprint-exporter report`: unit tests against a fake of Prometheus' query API, and an
end-to-end test against a real Prometheus that scrapes synthetic footprint metrics and evaluates
the rule pack (rules/footprint.rules.yaml)."""

from __future__ import annotations

import base64
import datetime
import json
import math
import shutil
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter import report
from tests.support.report import (
    CO2E,
    CO2E_RATE,
    ENERGY_RATE,
    GPU_BLOOM,
    GPU_GRAMS,
    LIFETIME_BLOOM,
    LIFETIME_SECONDS,
    PASSWORD,
    PUE,
    RULES,
    SERVER_BLOOM,
    SERVER_GRAMS,
    TOKEN,
    FakePrometheus,
    NodeFacts,
    Prometheus,
    RunPod,
    SyntheticExporter,
    backfill,
    closed_port,
    get_json,
    grams,
    prom,
    run,
    secret_file,
    vector,
    write_exporter_series,
)
from tests.support.webconfig import Pki, pki

__all__ = ["pki", "prom"]  # the fixtures, from tests/support/


# --- unit tests ------------------------------------------------------------------------------

async def test_sends_the_documented_queries_at_one_instant(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time()
    assert await run("--prometheus", prom.url + "/", "--timeout", "12") == 0
    assert [r["query"] for r in prom.requests] == [
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m[7d:5m]))"
        " * 300",
        "sum by (model, phase) (sum_over_time(model:footprint_energy_joules:rate5m[7d:5m])) * 300",
        "sum by (model, phase, scope) (sum_over_time(model:footprint_water_liters:rate5m[7d:5m]))"
        " * 300",
    ]
    assert prom.requests[0]["time"] == prom.requests[1]["time"] == prom.requests[2]["time"]
    assert before - 0.001 <= float(prom.requests[0]["time"]) <= time.time()
    assert {r["timeout"] for r in prom.requests} == {"12"}
    capsys.readouterr()


async def test_since_and_step_go_into_the_subquery(prom: FakePrometheus) -> None:
    assert await run("--prometheus", prom.url, "--since", "1h30m", "--step", "500ms",
                     "--format", "csv") == 0
    assert prom.requests[0]["query"] == (
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m"
        "[1h30m:500ms])) * 0.5")


async def test_step_defaults_to_5m_or_since_where_shorter(prom: FakePrometheus) -> None:
    assert await run("--prometheus", prom.url, "--since", "90s", "--format", "csv") == 0
    assert await run("--prometheus", prom.url, "--since", "1d", "--format", "csv") == 0
    assert [r["query"] for r in prom.requests[::3]] == [
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m"
        "[90s:90s])) * 90",
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m"
        "[1d:5m])) * 300"]


TABLE = """\
CO2e per model and phase, last 7d (step 5m)

MODEL  PHASE      OPERATIONAL  INFRASTRUCTURE  EMBODIED    TOTAL  OPER%  INFRA%   EMB%  ENERGY kWh        ENERGY J  WATER ON-SITE L  WATER OFF-SITE L
bert   inference      2.50 t           500 kg   1.00 t   4.00 t   62.5%   12.5%  25.0%       6,250  22,500,000,000                -                 -
llama  inference      15.0 g          3.00 g    2.00 g   20.0 g   75.0%   15.0%  10.0%      0.0375         135,000           0.0675             0.250
llama  training       12.0 kg         2.40 kg    600 g   15.0 kg  80.0%   16.0%   4.0%        30.0     108,000,000             54.0               200
-----  ---------  -----------  --------------  --------  -------  -----  ------  -----  ----------  --------------  ---------------  ----------------
TOTAL                 2.51 t           502 kg   1.00 t   4.02 t   62.6%   12.5%  24.9%       6,280  22,608,135,000             54.1               200
"""  # noqa: E501


async def test_table(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url) == 0
    out, err = capsys.readouterr()
    assert out == TABLE
    assert err == ""


def record(model: str | None, phase: str | None, op: float, infra: float, emb: float,
           total: float, joules: float, water: tuple[float, float] | None = None
           ) -> dict[str, Any]:
    return {"model": model, "phase": phase, "operational_grams": op,
            "infrastructure_grams": infra, "embodied_grams": emb, "total_grams": total,
            "operational_share": op / total, "infrastructure_share": infra / total,
            "embodied_share": emb / total, "energy_joules": joules,
            "energy_kwh": joules / 3.6e6,
            "water_onsite_liters": None if water is None else water[0],
            "water_offsite_liters": None if water is None else water[1]}


BERT = record("bert", "inference", 2_500_000.0, 500_000.0, 1_000_000.0, 4_000_000.0, 22.5e9)
LLAMA_INF = record("llama", "inference", 15.0, 3.0, 2.0, 20.0, 135_000.0, (0.0675, 0.25))
LLAMA_TRAIN = record("llama", "training", 12_000.0, 2_400.0, 600.0, 15_000.0, 108e6,
                     (54.0, 200.0))


async def test_json(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url, "--format", "json") == 0
    got = json.loads(capsys.readouterr().out)
    totals = record(None, None, 2_512_015.0, 502_403.0, 1_000_602.0, 4_015_020.0,
                    22_608_135_000.0, (54.0675, 200.25))  # bert's missing water adds nothing
    assert got == [BERT, LLAMA_INF, LLAMA_TRAIN, totals]
    assert list(got[0]) == list(report.FIELDS)


async def test_csv(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url, "--model", "llama", "--format", "csv") == 0
    assert capsys.readouterr().out == (
        "model,phase,operational_grams,infrastructure_grams,embodied_grams,total_grams,"
        "operational_share,infrastructure_share,embodied_share,energy_joules,energy_kwh,"
        "water_onsite_liters,water_offsite_liters\n"
        "llama,inference,15.0,3.0,2.0,20.0,0.75,0.15,0.1,135000.0,0.0375,0.0675,0.25\n"
        "llama,training,12000.0,2400.0,600.0,15000.0,0.8,0.16,0.04,108000000.0,30.0,54.0,200.0\n"
        f"TOTAL,,12015.0,2403.0,602.0,15020.0,{12015 / 15020!r},{2403 / 15020!r},"
        f"{602 / 15020!r},108135000.0,{108135000 / 3.6e6!r},54.0675,200.25\n")


async def test_model_filter_is_an_exact_match(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (200, vector(
        *grams("llama", "inference", operational=15.0, infrastructure=3.0, embodied=2.0),
        *grams("llama", "training", operational=12_000.0, infrastructure=2_400.0,
               embodied=600.0),
        *grams("llama-2", "inference", operational=1.0),
        *grams("Llama", "inference", operational=1.0)))
    assert await run("--prometheus", prom.url, "--model", "llama", "--format", "json") == 0
    got = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["phase"]) for r in got] == [
        ("llama", "inference"), ("llama", "training"), (None, None)]
    assert got[-1]["total_grams"] == 15_020.0
    assert got[-1]["energy_joules"] == 108_135_000.0


async def test_shares_total_and_missing_pieces(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    """The total is the rule pack's scope="total" where there, else the sum of the scopes; a
    missing scope or energy is 0; a zero total has no shares; model="" shows as (none)."""
    prom.co2e = (200, vector(
        *grams("a", "training", operational=6.0, infrastructure=1.5),  # no total: 7.5
        *grams("b", "inference", operational=0.0, total=0.0),
        *grams("", "other", embodied=4.0, total=4.0)))
    prom.energy = (200, vector(({"model": "c", "phase": "inference"}, 7.2e6)))
    assert await run("--prometheus", prom.url, "--format", "json") == 0
    rows = {(r["model"], r["phase"]): r for r in json.loads(capsys.readouterr().out)}
    a = rows["a", "training"]
    assert (a["total_grams"], a["operational_share"], a["infrastructure_share"],
            a["embodied_share"], a["energy_joules"]) == (7.5, 0.8, 0.2, 0.0, 0.0)
    b = rows["b", "inference"]
    assert (b["total_grams"], b["operational_share"], b["embodied_share"]) == (0.0, None, None)
    assert rows["", "other"]["embodied_share"] == 1.0
    c = rows["c", "inference"]
    assert (c["total_grams"], c["energy_kwh"], c["operational_share"]) == (0.0, 2.0, None)
    assert rows[None, None]["total_grams"] == 11.5
    assert math.isclose(sum(rows[None, None][f"{s}_share"] for s in report.SCOPES), 1.0)

    assert await run("--prometheus", prom.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].split() == ["(none)", "other", "0", "g", "0", "g", "4.00", "g", "4.00", "g",
                                "0.0%", "0.0%", "100.0%", "0", "0", "-", "-"]
    assert lines[5].split() == ["b", "inference", "0", "g", "0", "g", "0", "g", "0", "g",
                                "-", "-", "-", "0", "0", "-", "-"]
    assert lines[6].split() == ["c", "inference", "0", "g", "0", "g", "0", "g", "0", "g",
                                "-", "-", "-", "2.00", "7,200,000", "-", "-"]


async def test_non_finite_values_are_left_out_with_a_warning(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (200, vector(*grams("a", "training", operational=1.0, embodied=float("nan"))))
    assert await run("--prometheus", prom.url, "--format", "csv", "--model", "a") == 0
    out, err = capsys.readouterr()
    assert "a,training,1.0,0.0,0.0,1.0,1.0,0.0,0.0,0.0,0.0,,\n" in out  # no water: empty
    assert err.startswith("footprint-exporter report: warning: leaving out nan for model='a'")


async def test_no_data(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = prom.energy = (200, vector())
    assert await run("--prometheus", prom.url, "--since", "90s", "--step", "15s") == 1
    assert capsys.readouterr() == ("", (
        "footprint-exporter report: no footprint data in the last 90s "
        "(is the rule pack loaded and the exporter scraped?)\n"))


async def test_no_data_for_the_model_names_those_with_data(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url, "--model", "llam") == 1
    assert capsys.readouterr() == ("", (
        "footprint-exporter report: no footprint data for model 'llam' in the last 7d "
        "(is the rule pack loaded and the exporter scraped?); models with data: bert, llama\n"))


async def test_api_error_bad_data(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (400, {"status": "error", "errorType": "bad_data",
                       "error": 'invalid parameter "query": 1:1: parse error: unexpected'})
    assert await run("--prometheus", prom.url) == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {prom.url} rejected the query: "
        'bad_data: invalid parameter "query": 1:1: parse error: unexpected\n'))


async def test_api_error_with_status_200(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.energy = (200, {"status": "error", "errorType": "timeout",
                         "error": "query timed out in expression evaluation"})
    assert await run("--prometheus", prom.url) == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {prom.url} rejected the query: "
        "timeout: query timed out in expression evaluation\n"))


@pytest.mark.parametrize(("status", "body", "says"), [
    (404, "404 page not found", "answered HTTP 404 Not Found to /api/v1/query; check "
     "--prometheus (a Prometheus base URL, such as http://localhost:9090)"),
    (200, "<html>Grafana</html>", "answered something that is not JSON; check --prometheus"),
    (200, {"status": "success", "data": {"resultType": "matrix", "result": []}},
     "answered an unexpected shape (not an instant vector); check --prometheus"),
])
async def test_not_a_prometheus(prom: FakePrometheus, capsys: pytest.CaptureFixture[str],
                                status: int, body: Any, says: str) -> None:
    prom.co2e = (status, body)
    assert await run("--prometheus", prom.url) == 2
    assert capsys.readouterr() == (
        "", f"footprint-exporter report: error: Prometheus at {prom.url} {says}\n")


async def test_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert await run("--prometheus", url) == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: cannot reach Prometheus at {url}: connection "
        "refused; check --prometheus; is Prometheus running?\n"))


async def test_unresolvable_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", "http://no-such-host.invalid:9090") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("footprint-exporter report: error: cannot reach Prometheus at "
                          "http://no-such-host.invalid:9090: cannot resolve the host (")
    assert err.endswith("); check --prometheus; is Prometheus running?\n")
    assert err.count("\n") == 1


async def test_timeout(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.delay = 2.0
    assert await run("--prometheus", prom.url, "--timeout", "0.2") == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: cannot reach Prometheus at {prom.url}: no answer "
        "within 0.2 s; check --prometheus; is Prometheus running?\n"))


@pytest.mark.parametrize(("args", "says"), [
    (["--since", "7"], "argument --since: expected a Prometheus duration such as 90s, 15m, 7d; "
     "got '7'"),
    (["--since", "1.5h"], "argument --since: expected a Prometheus duration such as 90s, 15m, "
     "7d; got '1.5h'"),
    (["--step", "0m"], "argument --step: expected a duration above zero, got '0m'"),
    (["--timeout", "0"], "argument --timeout: expected seconds > 0, got '0'"),
    (["--format", "xml"], "argument --format: invalid choice: 'xml' (choose from 'table', "
     "'markdown', 'json', 'csv')"),
])
def test_bad_arguments(capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exc:
        report.main(["--prometheus", "http://localhost:9090", *args])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"footprint-exporter report: error: {says} (see --help)\n"


def test_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        report.main(["--prometheus", "localhost:9090"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "footprint-exporter report: error: argument --prometheus: expected http://HOST:PORT, "
        "got 'localhost:9090' (see --help)\n")


def test_step_longer_than_since(capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--prometheus", "http://localhost:1", "--since", "1m",
                        "--step", "5m"]) == 2
    assert capsys.readouterr().err == (
        "footprint-exporter report: error: --step 5m is longer than --since 1m\n")


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("7d", 604_800), ("1w", 604_800), ("1y", 31_536_000),
    ("1h30m", 5400), ("500ms", 0.5), ("1m30s250ms", 90.25),
])
def test_durations(text: str, seconds: float) -> None:
    assert report.parse_duration(text) == report.Duration(text, seconds)


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0 g "), (0.0123, "0.0123 g "), (15.0, "15.0 g "), (999.0, "999 g "),
    (1_000.0, "1.00 kg"), (12_345.0, "12.3 kg"), (999_000.0, "999 kg"), (2.5e6, "2.50 t "),
    (1.234e9, "1,234 t "),
])
def test_gram_units(value: float, text: str) -> None:
    assert report.grams(value) == text


# --- authentication, tenants and TLS options -------------------------------------------------


async def test_bearer_token_and_headers_are_sent(
        prom: FakePrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = secret_file(tmp_path, "token", f"  {TOKEN}\n")
    assert await run("--prometheus", prom.url, "--bearer-token-file", str(token),
                     "--header", "X-Scope-OrgID: tenant-1", "--header", "X-Extra:v:with:colons",
                     "--format", "csv") == 0
    out, err = capsys.readouterr()
    assert len(prom.headers) == 3
    for headers in prom.headers:  # every query
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["x-scope-orgid"] == "tenant-1"
        assert headers["x-extra"] == "v:with:colons"
        assert headers["accept"] == "application/json"
    assert out.startswith("model,phase,") and err == ""
    assert TOKEN not in out + err


async def test_basic_auth_is_sent(prom: FakePrometheus, tmp_path: Path) -> None:
    password = secret_file(tmp_path, "password", PASSWORD + "\n")
    assert await run("--prometheus", prom.url, "--basic-auth-user", "footprint",
                     "--basic-auth-password-file", str(password), "--format", "json") == 0
    expected = "Basic " + base64.b64encode(f"footprint:{PASSWORD}".encode()).decode()
    assert [h["authorization"] for h in prom.headers] == [expected] * 3


async def test_no_credentials_sent_without_options(prom: FakePrometheus) -> None:
    assert await run("--prometheus", prom.url, "--format", "json") == 0
    assert all("authorization" not in h for h in prom.headers)


@pytest.mark.parametrize(("status", "authenticated", "fix"), [
    (401, True, "check --bearer-token-file, or --basic-auth-user and "
     "--basic-auth-password-file"),
    (401, False, "it needs credentials: --bearer-token-file, or --basic-auth-user and "
     "--basic-auth-password-file"),
    (403, True, "check --bearer-token-file, or --basic-auth-user and --basic-auth-password-file "
     "(and --header X-Scope-OrgID for a Mimir or Cortex tenant)"),
])
async def test_refused_credentials(prom: FakePrometheus, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], status: int,
                                   authenticated: bool, fix: str) -> None:
    prom.co2e = (status, f"token {TOKEN} is not valid")  # a server that echoes it
    token = secret_file(tmp_path, "token", TOKEN)
    auth = ["--bearer-token-file", str(token)] if authenticated else []
    assert await run("--prometheus", prom.url, *auth) == 2
    reason = "Unauthorized" if status == 401 else "Forbidden"
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: Prometheus at {prom.url} answered HTTP {status} "
        f"{reason} to /api/v1/query; {fix}\n"))


NO_AUTHORIZATION_HEADER = (
    "a credential on the command line is shown by ps to every user of this machine and kept "
    "in the shell's history; put it in a file and give --bearer-token-file FILE (for 'Bearer "
    "<token>', the file holding the token), or --basic-auth-user USER and "
    "--basic-auth-password-file FILE")


def bad_input_cases(tmp: Path) -> list[tuple[list[str], str]]:
    token = secret_file(tmp, "token", TOKEN)
    empty = secret_file(tmp, "empty", " \n")
    two_lines = secret_file(tmp, "two-lines", f"{TOKEN}\nmore\n")
    not_pem = secret_file(tmp, "not-a-ca.pem", "hello\n")
    missing = tmp / "missing"
    fix_token = "give --bearer-token-file the path of a file that holds the token"
    fix_ca = ("give --ca-file a PEM file with the certificate of the CA that signed the "
              "server's")
    https = ["--prometheus", "https://127.0.0.1:1"]
    return [
        (["--bearer-token-file", str(missing)],
         f"--bearer-token-file: cannot read {str(missing)!r} (No such file or directory); "
         f"{fix_token}"),
        (["--bearer-token-file", TOKEN],  # the token pasted in the file's place
         "--bearer-token-file: cannot read a name of 18 characters (not shown: only an absolute "
         "path in an existing directory is, anything else may be a pasted secret) (No such file "
         f"or directory); {fix_token}"),
        (["--bearer-token-file", str(empty)],
         f"--bearer-token-file: {str(empty)!r} is empty; {fix_token}"),
        (["--bearer-token-file", str(two_lines)],
         f"--bearer-token-file: {str(two_lines)!r} holds more than one line; {fix_token}, "
         "alone on one line"),
        (["--bearer-token-file", str(tmp)],
         f"--bearer-token-file: cannot read {str(tmp)!r} (a directory, not a regular file); "
         f"{fix_token}"),
        (["--basic-auth-user", "u", "--basic-auth-password-file", str(empty)],
         f"--basic-auth-password-file: {str(empty)!r} is empty; give --basic-auth-password-file "
         "the path of a file that holds the password"),
        (["--bearer-token-file", str(token), "--basic-auth-user", "u",
          "--basic-auth-password-file", str(token)],
         "--bearer-token-file and --basic-auth-user: choose one, a bearer token or basic auth, "
         "not both"),
        (["--basic-auth-user", "u"],
         "--basic-auth-user: give the password too, in a file, with --basic-auth-password-file"),
        (["--basic-auth-password-file", str(token)],
         "--basic-auth-password-file: give the user name too, with --basic-auth-user"),
        (["--basic-auth-user", "a:b", "--basic-auth-password-file", str(token)],
         "--basic-auth-user: expected a user name without ':', got a string of 3 characters"),
        (["--header", f"Bearer {TOKEN}"],
         "--header: expected 'Name: value', such as 'X-Scope-OrgID: tenant-1', got a string of "
         "25 characters without a colon"),
        (["--header", "X Scope: 1"],
         "--header: expected 'Name: value' with a header name (letters, digits, '-') before the "
         "colon, got a string of 7 characters there"),
        (["--header", "X-Scope-OrgID:"],
         "--header X-Scope-OrgID: expected a value on one line after the colon, such as "
         "'X-Scope-OrgID: tenant-1'"),
        (["--header", "X-Scope-OrgID: a", "--header", "x-scope-orgid: b"],
         "--header: x-scope-orgid given twice; give each header once (Mimir and Cortex take "
         "several tenants in one X-Scope-OrgID: 'a|b')"),
        (["--header", f"Authorization: Bearer {TOKEN}", "--bearer-token-file", str(token)],
         f"--header Authorization: {NO_AUTHORIZATION_HEADER}"),
        (["--header", f"authorization: Basic {TOKEN}"],  # any case, without credentials too
         f"--header authorization: {NO_AUTHORIZATION_HEADER}"),
        (["--ca-file", str(not_pem)],
         "--ca-file: only applies to TLS; give an https:// --prometheus URL, or leave out "
         "--ca-file"),
        ([*https, "--ca-file", str(missing)],
         f"--ca-file: cannot read {str(missing)!r} (no such file or directory); {fix_ca}"),
        ([*https, "--ca-file", str(not_pem)],
         f"--ca-file: {str(not_pem)!r} holds no PEM certificate; {fix_ca}"),
        ([*https, "--ca-file", str(not_pem), "--insecure-skip-verify"],
         "--ca-file and --insecure-skip-verify: choose one; --ca-file verifies the server "
         "against a CA, --insecure-skip-verify does not verify"),
    ]


def test_bad_auth_and_tls_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each mistake: exit 2 before any request, one line naming the option and the fix, and
    never a secret (the token, a pasted token, a header's value)."""
    for args, says in bad_input_cases(tmp_path):
        argv = args if args[0] == "--prometheus" else [
            "--prometheus", f"http://127.0.0.1:{closed_port()}", *args]
        assert report.main(argv) == 2, args
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"footprint-exporter report: error: {says}\n"), args
        assert TOKEN not in err and PASSWORD not in err


def test_auth_options_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report.main(["--help"])
    out = capsys.readouterr().out
    for option in ("--bearer-token-file", "--basic-auth-user", "--basic-auth-password-file",
                   "--header", "--ca-file", "--insecure-skip-verify"):
        assert option in out


# --- end to end: a real Prometheus, the real rule pack ---------------------------------------

HISTORY_SECONDS = 400
"""Backfilled history: more than rate5m's window, so the rule's rate is exact from its first
evaluation (rate() divides by the whole 5 m, so a younger series reads low)."""


def rule_health(url: str) -> str:
    groups = get_json(url, "/api/v1/rules")["data"]["groups"]
    return "\n".join(f"{r.get('name')}: {r.get('health')} {r.get('lastError', '')}"
                     for g in groups for r in g["rules"])


def wait_for_recorded_history(url: str, seconds: float, timeout: float = 120.0) -> None:
    """Until the rule series for llama has been recorded for `seconds` (bounded polling)."""
    deadline = time.monotonic() + timeout
    selector = f'{CO2E}{{model="llama",phase="inference",scope="operational"}}[10m]'
    while time.monotonic() < deadline:
        result = get_json(url, "/api/v1/query", query=selector)["data"]["result"]
        if result and time.time() - float(result[0]["values"][0][0]) >= seconds:
            return
        time.sleep(1.0)
    raise AssertionError(f"{CO2E} for llama not recorded for {seconds} s within {timeout} s; "
                         f"rules:\n{rule_health(url)}")


@pytest.fixture
def prometheus_binary() -> Iterator[None]:
    missing = [b for b in ("prometheus", "promtool") if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run scripts/test.sh, which installs it")
    if not RULES.is_file():
        pytest.fail(f"{RULES} is missing: the report reads the rule pack's recording rules")
    yield


SINCE_S = 30
STEP_S = 1


@pytest.mark.slow(seconds=35)
def test_end_to_end_against_a_real_prometheus(
        prometheus_binary: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Synthetic counters growing at 0.5 g/s and 4.5 kW, scraped every second by a real
    Prometheus that evaluates the rule pack every second; the report over the last 30 s.

    The counters' first HISTORY_SECONDS are backfilled with promtool (same labels, same linear
    function of time), because rate(...[5m]) divides by the whole 5 minutes: a series only
    30 s old would read ~1/10 of its true rate and the report could not be checked against
    0.5 g/s x 30 s. The scraped samples then continue the backfilled series."""
    t0 = time.time() - HISTORY_SECONDS
    exporter = SyntheticExporter(t0)
    tsdb = tmp_path / "tsdb"
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "footprint-exporter", "honor_labels": True,
                            "static_configs": [{"targets": [exporter.address]}]}],
    }))
    prom: Prometheus | None = None
    try:
        backfill(tmp_path, tsdb, t0, time.time(), exporter.address)
        prom = Prometheus(tmp_path, config, tsdb)
        prom.wait_ready()
        # the subquery [30s:1s] needs the rule series for all of the last 30 s (+ margin)
        wait_for_recorded_history(prom.url, SINCE_S + 2)
        code = report.main(["--prometheus", prom.url, "--since", f"{SINCE_S}s",
                            "--step", f"{STEP_S}s", "--format", "json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        rows = {(r["model"], r["phase"]): r for r in json.loads(out)}
        llama = rows["llama", "inference"]
        # Tolerance. [30s:1s] takes one point per whole second in [now-30s, now]: 30 points, 31
        # when now falls on a whole second, so the sum may hold one step (= one scrape and
        # evaluation interval, 1 s) more than 30 s, or, should an evaluation be late, miss one.
        # Each point is the rate5m of a counter growing exactly linearly over a fully covered
        # 5 m window (backfilled history), so it is exact up to scrape timestamp jitter
        # (milliseconds over 300 s). Hence: one step's worth (0.5 g) plus 1 % of the expected.
        covered = SINCE_S
        tolerance = CO2E_RATE * STEP_S + 0.01 * CO2E_RATE * covered
        assert llama["operational_grams"] == pytest.approx(CO2E_RATE * covered, abs=tolerance)
        assert llama["infrastructure_grams"] == pytest.approx(
            (PUE - 1) * llama["operational_grams"], rel=1e-3)
        # embodied: half the GPUs, so half of (server + GPU) grams over the lifetime, per second
        embodied_rate = 0.5 * (SERVER_GRAMS + GPU_GRAMS) / LIFETIME_SECONDS
        assert llama["embodied_grams"] == pytest.approx(
            embodied_rate * covered, abs=embodied_rate * STEP_S + 0.01 * embodied_rate * covered)
        scopes = sum(llama[f"{s}_grams"] for s in report.SCOPES)
        assert llama["total_grams"] == pytest.approx(scopes, rel=1e-6)
        assert llama["energy_joules"] > 0
        assert llama["energy_joules"] == pytest.approx(
            ENERGY_RATE * covered, abs=ENERGY_RATE * STEP_S + 0.01 * ENERGY_RATE * covered)
        assert llama["energy_kwh"] == pytest.approx(llama["energy_joules"] / 3.6e6)
        assert rows[None, None]["total_grams"] == pytest.approx(
            sum(r["total_grams"] for k, r in rows.items() if k != (None, None)))
    finally:
        if prom is not None:
            prom.stop()
        exporter.close()
    # Prometheus stopped: the report says so in one line
    assert prom is not None
    assert report.main(["--prometheus", prom.url, "--since", "30s"]) == 2
    assert capsys.readouterr() == ("", (
        f"footprint-exporter report: error: cannot reach Prometheus at {prom.url}: connection "
        "refused; check --prometheus; is Prometheus running?\n"))


@pytest.mark.slow(seconds=5)
def test_end_to_end_tls_and_basic_auth(prometheus_binary: None, pki: Pki, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A real Prometheus behind its own --web.config.file (TLS with a test CA, basic auth with
    a bcrypt hash): the report verifies it with --ca-file and logs in with basic auth; without
    the CA, with a wrong password, or with no credentials it says which option to fix."""
    user = "footprint"
    web_config = tmp_path / "web.yml"
    web_config.write_text(json.dumps({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": {
            user: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()},
    }))
    password = secret_file(tmp_path, "password", PASSWORD + "\n")
    wrong = secret_file(tmp_path, "wrong", "not-the-password\n")
    t0 = time.time() - HISTORY_SECONDS
    exporter = SyntheticExporter(t0)
    tsdb = tmp_path / "tsdb"
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "footprint-exporter", "honor_labels": True,
                            "static_configs": [{"targets": [exporter.address]}]}],
    }))
    basic = "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    context = ssl.create_default_context(cafile=str(pki.ca))
    prom: Prometheus | None = None
    try:
        backfill(tmp_path, tsdb, t0, time.time(), exporter.address)
        prom = Prometheus(tmp_path, config, tsdb, web_config=web_config, tls=True,
                          context=context, headers={"Authorization": basic})
        prom.wait_ready()
        assert prom.url.startswith("https://127.0.0.1:")
        login = ["--basic-auth-user", user, "--basic-auth-password-file", str(password)]
        args = ["--prometheus", prom.url, "--since", "1m", "--step", "1s", "--format", "json"]
        deadline = time.monotonic() + 60
        while True:  # until the rule pack has recorded llama's rates
            code = report.main([*args, *login, "--ca-file", str(pki.ca)])
            out, err = capsys.readouterr()
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 0, err
        rows = {(r["model"], r["phase"]): r for r in json.loads(out)}
        assert rows["llama", "inference"]["operational_grams"] > 0
        assert rows["llama", "inference"]["energy_joules"] > 0

        # --insecure-skip-verify: no CA needed
        assert report.main([*args, *login, "--insecure-skip-verify"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["model"] == "llama"

        # the system's CAs do not know the test CA
        assert report.main([*args, *login]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"footprint-exporter report: error: Prometheus at {prom.url} has "
                              "a TLS certificate that does not verify (")
        assert err.endswith("); give --ca-file the CA that signed it, and a host name in "
                            "--prometheus that the certificate names\n")
        # a wrong password, and none: HTTP 401, never the password
        for login_args, fix in (
                (["--basic-auth-user", user, "--basic-auth-password-file", str(wrong)],
                 f"check {report.CREDENTIAL_OPTIONS}"),
                ([], f"it needs credentials: {report.CREDENTIAL_OPTIONS}")):
            assert report.main([*args, *login_args, "--ca-file", str(pki.ca)]) == 2
            out, err = capsys.readouterr()
            assert (out, err) == ("", (
                f"footprint-exporter report: error: Prometheus at {prom.url} answered HTTP 401 "
                f"Unauthorized to /api/v1/query; {fix}\n"))
        # plain http to the TLS port
        plain = prom.url.replace("https://", "http://")
        assert report.main(["--prometheus", plain, *login]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    finally:
        if prom is not None:
            prom.stop()
        exporter.close()


# --- --by run: training runs against a real Prometheus on backfilled exporter series ---------
#
# The exporter's own metric names and labels (footprint_container_*, footprint_node_info,
# footprint_pue, footprint_embodied_*, footprint_grid_intensity_grams_per_kwh, the water
# gauges), scraped every minute on the minute, written as OpenMetrics and backfilled with
# promtool; then the rule pack's container records that the report reads are backfilled at a
# 1-minute evaluation interval (tests/backfill.py), and the report runs with --until at the
# data's end. The server's 59 s lookback reads backfilled records as a live group's are read.

RUN_RECORDS = {"container:footprint_co2e_grams:rate5m", "container:footprint_energy_joules:rate5m",
               "node:footprint_grid_intensity_cleanest_hour_grams_per_kwh:min1d"}


@contextmanager
def backfilled(tmp: Path, nodes: Mapping[str, NodeFacts], pods: Sequence[RunPod], t0: float,
               t1: float, restarts: Mapping[str, tuple[float, float]] | None = None
               ) -> Iterator[str]:
    """A Prometheus on the exporters' series and the records the run report reads; its URL."""
    import yaml

    from tests.backfill import BlockPrometheus, backfill_openmetrics, backfill_rules
    from tests.support import require_binary

    require_binary("promtool")
    require_binary("prometheus")
    source = tmp / "exporters.om"
    write_exporter_series(source, nodes, pods, t0, t1, restarts)
    data = tmp / "data"
    backfill_openmetrics(source, data)
    pack = yaml.safe_load(RULES.read_text())
    needed = [rule for group in pack["groups"] for rule in group["rules"]
              if rule.get("record") in RUN_RECORDS]
    with BlockPrometheus(data, lookback="59s") as prometheus:
        prometheus.start()
        backfill_rules(prometheus, needed, t0, t1 + 600, tmp)
        yield prometheus.url


def run_report(url: str, until: float, since: str, *extra: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report.main(["--prometheus", url, "--by", "run", "--until", f"{until:.0f}",
                            "--since", since, *extra])
    return code, out.getvalue(), err.getvalue()


def embodied_g_per_s(gpu_ratio: float, gpus: int = 8) -> float:
    """The rule pack's GPU branch: the container's share of the server and all its GPUs."""
    return gpu_ratio * (SERVER_BLOOM + gpus * GPU_BLOOM) / LIFETIME_BLOOM


G = 1_700_002_800.0  # 2023-11-14T23:00:00Z: on the hour, on the 5-minute grid
MIN = 60.0


@pytest.mark.slow(seconds=5)
def test_runs_across_an_exporter_restart_and_pod_churn(tmp_path: Path) -> None:
    """Two training runs over 3 hours on two nodes; node n1's exporter restarts mid-run (its
    counters start again from 0) and the Job's pod is replaced by one on another node.

    Nodes: n1 400 g/kWh, PUE 1.5; n2 200 g/kWh, PUE 1.1; 8 GPUs each, BLOOM's embodied defaults
    (2,500 kg server + 8 x 150 kg GPUs over 160,833,600 s = 0.0230055 g/s per node). No water
    gauges. Times from G (on the hour):
      Job finetune-7 (model llama-3-8b), 1,800 W, GPU ratio 0.25 (2 of 8 GPUs):
        pod finetune-7-abcde on n1, 0:02 to 1:02; pod finetune-7-fghij on n2, 1:12 to 2:22
      PyTorchJob pretrain (model mistral-7b), 3,600 W, GPU ratio 0.5 (4 GPUs), 0:07 to 2:47:
        pretrain-worker-0 on n1, pretrain-worker-1 on n2
      Deployment vllm on n2 (inference, 0:00 to 3:00): not a run
      n1's exporter crashes at 0:30:20 and is up at 0:30:50, counting from 0: the scrape at
      0:31 reads 10 s of energy; the 50 s from the last scrape (0:30) to 0:30:50 are lost.

    Hand computation (what the counters say; the figures are Riemann sums of the rate5m
    records, which add 30 s at each pod's last scrape: rate() extrapolates half a scrape
    interval past a series' end, so the expected energy includes 30 s x watts per pod):
      finetune-7 seconds: pod 1 (30:00 - 2:00) + (62:00 - 30:50) = 1,680 + 1,870 = 3,550 s,
        + 30 s = 3,580 s; pod 2 70 min = 4,200 s, + 30 s = 4,230 s
        energy 1,800 W x (3,580 + 4,230) s = 14,058,000 J = 3.905 kWh
        operational 1,800 x 3,580 / 3.6e6 x 400 + 1,800 x 4,230 / 3.6e6 x 200 = 716 + 423
          = 1,139 g
        infrastructure 716 x 0.5 + 423 x 0.1 = 358 + 42.3 = 400.3 g
        GPU-hours 0.25 x 8 x (60 + 70) min / 60 = 4.3333 (the gauge is read at the 5-minute
          points where it exists: 12 + 14 points, the pods' lifetimes; the restart missed
          no scrape)
        embodied 0.25 x 0.0230055 g/s x 7,800 s = 44.861 g
      pretrain seconds: worker-0 (30:00 - 7:00) + (167:00 - 30:50) = 1,380 + 8,170 = 9,550 s,
        + 30 s = 9,580 s; worker-1 160 min = 9,600 s, + 30 s = 9,630 s
        energy 3,600 W x (9,580 + 9,630) s = 69,156,000 J = 19.21 kWh
        operational 3,600 x 9,580 / 3.6e6 x 400 + 3,600 x 9,630 / 3.6e6 x 200
          = 3,832 + 1,926 = 5,758 g
        infrastructure 3,832 x 0.5 + 1,926 x 0.1 = 1,916 + 192.6 = 2,108.6 g
        GPU-hours 0.5 x 8 x 160 min / 60 x 2 = 21.3333
        embodied 0.5 x 0.0230055 g/s x 9,600 s x 2 = 220.853 g
      shiftable: the intensity is constant, so the cleanest hour is every hour: 0 g.
    """
    nodes = {"n1": NodeFacts(400.0, 1.5), "n2": NodeFacts(200.0, 1.1)}
    job, pt = ("Job", "finetune-7"), ("PyTorchJob", "pretrain")
    pods = [
        RunPod("n1", "research", "finetune-7-abcde", "llama-3-8b", *job, 1800.0, 0.25,
               G + 2 * MIN, G + 62 * MIN),
        RunPod("n2", "research", "finetune-7-fghij", "llama-3-8b", *job, 1800.0, 0.25,
               G + 72 * MIN, G + 142 * MIN),
        RunPod("n1", "research", "pretrain-worker-0", "mistral-7b", *pt, 3600.0, 0.5,
               G + 7 * MIN, G + 167 * MIN, container="pytorch"),
        RunPod("n2", "research", "pretrain-worker-1", "mistral-7b", *pt, 3600.0, 0.5,
               G + 7 * MIN, G + 167 * MIN, container="pytorch"),
        RunPod("n2", "serving", "vllm-7d4b9c-x2x9z", "llama-3-8b", "Deployment", "vllm",
               1000.0, 0.25, G, G + 180 * MIN, phase="inference", container="vllm"),
    ]
    restart = {"n1": (G + 30 * MIN + 20, G + 30 * MIN + 50)}
    want = {
        "finetune-7": {"energy_joules": 14_058_000.0, "operational_grams": 1_139.0,
                       "infrastructure_grams": 400.3, "gpu_hours": 130 / 30,
                       "embodied_grams": embodied_g_per_s(0.25) * 7_800},
        "pretrain": {"energy_joules": 69_156_000.0, "operational_grams": 5_758.0,
                     "infrastructure_grams": 2_108.6, "gpu_hours": 64 / 3,
                     "embodied_grams": embodied_g_per_s(0.5) * 19_200},
    }
    with backfilled(tmp_path, nodes, pods, G, G + 180 * MIN, restart) as url:
        code, out, err = run_report(url, G + 185 * MIN, "4h", "--format", "json")
        assert (code, err) == (0, ""), err
        rows = {r["name"]: r for r in json.loads(out)}
        table = run_report(url, G + 185 * MIN, "4h")[1]
    assert set(rows) == {"finetune-7", "pretrain", None}, "the inference pod is no run"
    assert (rows["finetune-7"]["kind"], rows["pretrain"]["kind"]) == ("Job", "PyTorchJob")
    assert (rows["finetune-7"]["model"], rows["pretrain"]["model"]) == (
        "llama-3-8b", "mistral-7b")
    for name, figures in want.items():
        row = rows[name]
        for key, value in figures.items():
            assert row[key] == pytest.approx(value, rel=1e-6), (name, key, row[key], value)
        assert row["total_grams"] == pytest.approx(
            figures["operational_grams"] + figures["infrastructure_grams"]
            + figures["embodied_grams"], rel=1e-6)
        assert row["grams_per_gpu_hour"] == pytest.approx(
            row["total_grams"] / figures["gpu_hours"], rel=1e-6)
        assert row["water_onsite_liters"] is None and row["water_offsite_liters"] is None
        assert abs(row["shiftable_savings_grams"]) < 1e-6 * row["operational_grams"]
    # start and end: the run's first and last series, to within one 5-minute step
    first = {"finetune-7": G + 2 * MIN, "pretrain": G + 7 * MIN}
    last = {"finetune-7": G + 142 * MIN, "pretrain": G + 167 * MIN}
    for name in want:
        start = datetime.datetime.fromisoformat(rows[name]["start"].replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(rows[name]["end"].replace("Z", "+00:00"))
        assert 0 <= start.timestamp() - first[name] < 300, rows[name]["start"]
        assert 0 <= last[name] - end.timestamp() < 300, rows[name]["end"]
    assert "WATER ON-SITE L" in table and "finetune-7" in table
    print(table)


BLOOM_NODES = 48
BLOOM_HOURS = 6
BLOOM_INTENSITY, BLOOM_PUE = 57.0, 1.2
BLOOM_GPU_WATTS = 400.0
"""BLOOM's final training run: 433,196 kWh of dynamic power over 1,082,990 GPU-hours, 0.4 kW
per A100 (Luccioni et al., Table 2)."""
WUE_TEST, WATER_TEST = 0.5, 2.0
"""Litres per kWh: test values, not cited figures (docs/lifecycle.md has the defaults)."""


@pytest.mark.slow(seconds=10)
def test_a_bloom_sized_training_run(tmp_path: Path) -> None:
    """The Done-when case of issue 14: a BLOOM-sized run, 384 A100s (48 nodes x 8, one
    PyTorchJob worker per node holding all 8 GPUs) for 6 hours, at 57 g/kWh and PUE 1.2, with
    BLOOM's embodied defaults, and water gauges; each figure within 1% of the hand computation.

    Hand computation (6 h = 21,600 s; each worker from 0:02:00 to 6:02:00):
      GPU-hours       384 GPUs x 6 h = 2,304
      energy          384 x 400 W x 21,600 s = 3,317,760,000 J = 921.6 kWh
      dynamic (operational)   921.6 kWh x 57 g/kWh = 52,531.2 g
      idle/infrastructure     52,531.2 g x (1.2 - 1) = 10,506.24 g
      embodied        48 nodes x (2,500,000 g + 8 x 150,000 g) / 160,833,600 s x 21,600 s
                      = 48 x 3,700,000 x 21,600 / 160,833,600 = 23,851.73 g
      total           52,531.2 + 10,506.24 + 23,851.73 = 86,889.17 g
      grams per GPU-hour      86,889.17 / 2,304 = 37.712 g
      water on site   921.6 kWh x 0.5 L/kWh = 460.8 L
      water off site  921.6 kWh x 1.2 x 2.0 L/kWh = 2,211.84 L
    The measured figures carry rate()'s extrapolation of 30 s past each worker's last scrape
    (+0.14% on the energy scopes)."""
    nodes = {f"jz{i:02d}": NodeFacts(BLOOM_INTENSITY, BLOOM_PUE, WUE_TEST, WATER_TEST)
             for i in range(BLOOM_NODES)}
    start, end = G + 2 * MIN, G + 2 * MIN + BLOOM_HOURS * 3600
    pods = [RunPod(node, "bigscience", f"bloom-176b-worker-{i}", "bigscience/bloom",
                   "PyTorchJob", "bloom-176b", 8 * BLOOM_GPU_WATTS, 1.0, start, end,
                   container="pytorch")
            for i, node in enumerate(nodes)]
    seconds = BLOOM_HOURS * 3600
    kwh = 384 * BLOOM_GPU_WATTS * seconds / 3.6e6
    operational = kwh * BLOOM_INTENSITY
    infrastructure = operational * (BLOOM_PUE - 1)
    embodied = BLOOM_NODES * (SERVER_BLOOM + 8 * GPU_BLOOM) / LIFETIME_BLOOM * seconds
    total = operational + infrastructure + embodied
    want = {"gpu_hours": 2_304.0, "energy_kwh": 921.6, "operational_grams": 52_531.2,
            "infrastructure_grams": 10_506.24, "embodied_grams": 23_851.73,
            "total_grams": 86_889.17, "grams_per_gpu_hour": 37.712,
            "water_onsite_liters": 460.8, "water_offsite_liters": 2_211.84}
    assert (kwh, operational) == pytest.approx((921.6, 52_531.2))
    assert (infrastructure, embodied, total) == pytest.approx(
        (10_506.24, 23_851.73, 86_889.17), rel=1e-6)
    with backfilled(tmp_path, nodes, pods, G, end + 10 * MIN) as url:
        code, out, err = run_report(url, end + 15 * MIN, "7h", "--format", "json")
        assert (code, err) == (0, ""), err
        table = run_report(url, end + 15 * MIN, "7h")[1]
        markdown_ = run_report(url, end + 15 * MIN, "7h", "--format", "markdown")[1]
    run, totals_ = json.loads(out)
    assert (run["namespace"], run["kind"], run["name"], run["model"]) == (
        "bigscience", "PyTorchJob", "bloom-176b", "bigscience/bloom")
    deviation = {key: run[key] / value - 1 for key, value in want.items()}
    print(table, markdown_, json.dumps(deviation, indent=2), sep="\n")
    assert all(abs(d) < 0.01 for d in deviation.values()), deviation
    assert totals_["total_grams"] == run["total_grams"]
    for line in ("OPERATIONAL", "INFRASTRUCTURE", "EMBODIED", "TOTAL", "WATER ON-SITE L"):
        assert line in table and line in markdown_
    assert markdown_.splitlines()[3].startswith("| ---")
