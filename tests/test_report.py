"""`footprint-exporter report`: unit tests against a fake of Prometheus' query API, and an
end-to-end test against a real Prometheus that scrapes synthetic footprint metrics and evaluates
the rule pack (rules/footprint.rules.yaml)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web

from exporter import report
from tests.support import REPO
from tests.test_webconfig import Pki, pki

__all__ = ["pki"]  # the fixture, shared with tests/test_webconfig.py

RULES = REPO / "rules" / "footprint.rules.yaml"
CO2E = "model:footprint_co2e_grams:rate5m"
ENERGY = "model:footprint_energy_joules:rate5m"


# --- a fake Prometheus -----------------------------------------------------------------------

def vector(*samples: tuple[Mapping[str, str], float | str]) -> dict[str, Any]:
    """The body of a successful instant query, as Prometheus writes it."""
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": dict(labels), "value": [1700000000.123, str(value)]}
        for labels, value in samples]}}


def grams(model: str, phase: str, **scopes: float) -> list[tuple[dict[str, str], float]]:
    return [({"model": model, "phase": phase, "scope": scope}, value)
            for scope, value in scopes.items()]


CO2E_DATA = vector(
    *grams("llama", "inference", operational=15.0, infrastructure=3.0, embodied=2.0, total=20.0),
    *grams("llama", "training", operational=12_000.0, infrastructure=2_400.0, embodied=600.0,
           total=15_000.0),
    *grams("bert", "inference", operational=2_500_000.0, infrastructure=500_000.0,
           embodied=1_000_000.0, total=4_000_000.0),
)
ENERGY_DATA = vector(
    ({"model": "llama", "phase": "inference"}, 135_000.0),
    ({"model": "llama", "phase": "training"}, 108_000_000.0),
    ({"model": "bert", "phase": "inference"}, 22_500_000_000.0),
)


@dataclass
class FakePrometheus:
    """Answers /api/v1/query: `co2e` for the grams query, `energy` for the joules query, each a
    (HTTP status, body) pair; a str body goes out as text, anything else as JSON."""

    co2e: tuple[int, Any] = (200, CO2E_DATA)
    energy: tuple[int, Any] = (200, ENERGY_DATA)
    delay: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    """Each request's headers, names lower-cased."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.requests.append(params)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        await asyncio.sleep(self.delay)
        status, body = self.co2e if CO2E in params.get("query", "") else self.energy
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


@pytest.fixture
async def prom() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    app = web.Application()
    app.router.add_get("/api/v1/query", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def run(*argv: str) -> int:
    """report.main in a thread, so the fake (on this event loop) can answer it."""
    return await asyncio.to_thread(report.main, list(argv))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- unit tests ------------------------------------------------------------------------------

async def test_sends_the_documented_queries_at_one_instant(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time()
    assert await run("--prometheus", prom.url + "/", "--timeout", "12") == 0
    assert [r["query"] for r in prom.requests] == [
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m[7d:5m]))"
        " * 300",
        "sum by (model, phase) (sum_over_time(model:footprint_energy_joules:rate5m[7d:5m])) * 300",
    ]
    assert prom.requests[0]["time"] == prom.requests[1]["time"]
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
    assert [r["query"] for r in prom.requests[::2]] == [
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m"
        "[90s:90s])) * 90",
        "sum by (model, phase, scope) (sum_over_time(model:footprint_co2e_grams:rate5m"
        "[1d:5m])) * 300"]


TABLE = """\
CO2e per model and phase, last 7d (step 5m)

MODEL  PHASE      OPERATIONAL  INFRASTRUCTURE  EMBODIED    TOTAL  OPER%  INFRA%   EMB%  ENERGY kWh        ENERGY J
bert   inference      2.50 t           500 kg   1.00 t   4.00 t   62.5%   12.5%  25.0%       6,250  22,500,000,000
llama  inference      15.0 g          3.00 g    2.00 g   20.0 g   75.0%   15.0%  10.0%      0.0375         135,000
llama  training       12.0 kg         2.40 kg    600 g   15.0 kg  80.0%   16.0%   4.0%        30.0     108,000,000
-----  ---------  -----------  --------------  --------  -------  -----  ------  -----  ----------  --------------
TOTAL                 2.51 t           502 kg   1.00 t   4.02 t   62.6%   12.5%  24.9%       6,280  22,608,135,000
"""  # noqa: E501


async def test_table(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url) == 0
    out, err = capsys.readouterr()
    assert out == TABLE
    assert err == ""


def record(model: str | None, phase: str | None, op: float, infra: float, emb: float,
           total: float, joules: float) -> dict[str, Any]:
    return {"model": model, "phase": phase, "operational_grams": op,
            "infrastructure_grams": infra, "embodied_grams": emb, "total_grams": total,
            "operational_share": op / total, "infrastructure_share": infra / total,
            "embodied_share": emb / total, "energy_joules": joules,
            "energy_kwh": joules / 3.6e6}


BERT = record("bert", "inference", 2_500_000.0, 500_000.0, 1_000_000.0, 4_000_000.0, 22.5e9)
LLAMA_INF = record("llama", "inference", 15.0, 3.0, 2.0, 20.0, 135_000.0)
LLAMA_TRAIN = record("llama", "training", 12_000.0, 2_400.0, 600.0, 15_000.0, 108e6)


async def test_json(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url, "--format", "json") == 0
    got = json.loads(capsys.readouterr().out)
    totals = record(None, None, 2_512_015.0, 502_403.0, 1_000_602.0, 4_015_020.0,
                    22_608_135_000.0)
    assert got == [BERT, LLAMA_INF, LLAMA_TRAIN, totals]
    assert list(got[0]) == list(report.FIELDS)


async def test_csv(prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--prometheus", prom.url, "--model", "llama", "--format", "csv") == 0
    assert capsys.readouterr().out == (
        "model,phase,operational_grams,infrastructure_grams,embodied_grams,total_grams,"
        "operational_share,infrastructure_share,embodied_share,energy_joules,energy_kwh\n"
        "llama,inference,15.0,3.0,2.0,20.0,0.75,0.15,0.1,135000.0,0.0375\n"
        "llama,training,12000.0,2400.0,600.0,15000.0,0.8,0.16,0.04,108000000.0,30.0\n"
        f"TOTAL,,12015.0,2403.0,602.0,15020.0,{12015 / 15020!r},{2403 / 15020!r},"
        f"{602 / 15020!r},108135000.0,{108135000 / 3.6e6!r}\n")


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
                                "0.0%", "0.0%", "100.0%", "0", "0"]
    assert lines[5].split() == ["b", "inference", "0", "g", "0", "g", "0", "g", "0", "g",
                                "-", "-", "-", "0", "0"]
    assert lines[6].split() == ["c", "inference", "0", "g", "0", "g", "0", "g", "0", "g",
                                "-", "-", "-", "2.00", "7,200,000"]


async def test_non_finite_values_are_left_out_with_a_warning(
        prom: FakePrometheus, capsys: pytest.CaptureFixture[str]) -> None:
    prom.co2e = (200, vector(*grams("a", "training", operational=1.0, embodied=float("nan"))))
    assert await run("--prometheus", prom.url, "--format", "csv", "--model", "a") == 0
    out, err = capsys.readouterr()
    assert "a,training,1.0,0.0,0.0,1.0,1.0,0.0,0.0,0.0,0.0\n" in out
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
     "'json', 'csv')"),
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

TOKEN = "s3cr3t-t0ken-VALUE"
PASSWORD = "pa55-w0rd-VALUE"


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_bearer_token_and_headers_are_sent(
        prom: FakePrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = secret_file(tmp_path, "token", f"  {TOKEN}\n")
    assert await run("--prometheus", prom.url, "--bearer-token-file", str(token),
                     "--header", "X-Scope-OrgID: tenant-1", "--header", "X-Extra:v:with:colons",
                     "--format", "csv") == 0
    out, err = capsys.readouterr()
    assert len(prom.headers) == 2
    for headers in prom.headers:  # both queries
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
    assert [h["authorization"] for h in prom.headers] == [expected, expected]


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
         f"--bearer-token-file: cannot read {str(missing)!r} (no such file or directory); "
         f"{fix_token}"),
        (["--bearer-token-file", TOKEN],  # the token pasted in the file's place
         "--bearer-token-file: cannot read a name of 18 characters (not shown: only an absolute "
         "path in an existing directory is, anything else may be a pasted secret) (no such file "
         f"or directory); {fix_token}"),
        (["--bearer-token-file", str(empty)],
         f"--bearer-token-file: {str(empty)!r} is empty; {fix_token}"),
        (["--bearer-token-file", str(two_lines)],
         f"--bearer-token-file: {str(two_lines)!r} holds more than one line; {fix_token}, "
         "alone on one line"),
        (["--bearer-token-file", str(tmp)],
         f"--bearer-token-file: cannot read {str(tmp)!r} (is a directory); {fix_token}"),
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
         "--header Authorization: the credential options set this header already; give either "
         "--bearer-token-file, or --basic-auth-user and --basic-auth-password-file, or --header"),
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

INTENSITY_G_PER_KWH = 400.0
CO2E_RATE = 0.5
"""g/s of the synthetic container's operational emissions."""
ENERGY_RATE = CO2E_RATE / INTENSITY_G_PER_KWH * 3.6e6
"""J/s (4.5 kW) that give CO2E_RATE at INTENSITY_G_PER_KWH."""
PUE = 1.2
SERVER_GRAMS = 1_500_000.0
GPU_GRAMS = 150_000.0
LIFETIME_SECONDS = 4 * 365 * 86_400
CONTAINER = 'namespace="ml",pod="p",container="c",model="llama",phase="inference"'
HISTORY_SECONDS = 400
"""Backfilled history: more than rate5m's window, so the rule's rate is exact from its first
evaluation (rate() divides by the whole 5 m, so a younger series reads low)."""


def exposition(now: float, t0: float, *, timestamp: bool = False) -> str:
    """The synthetic exporter's metrics at `now`, counters started at `t0` (OpenMetrics with
    timestamps for promtool's backfill; the text format without, for scraping)."""
    ts = f" {now:.3f}" if timestamp else ""
    node = 'node="n1"'
    lines = [
        "# TYPE footprint_container_co2e_grams counter",
        f'footprint_container_co2e_grams_total{{{node},{CONTAINER},component="gpu",'
        f'mode="dynamic"}} {CO2E_RATE * (now - t0)}{ts}',
        "# TYPE footprint_container_energy_joules counter",
        f'footprint_container_energy_joules_total{{{node},{CONTAINER},component="gpu",'
        f'mode="dynamic"}} {ENERGY_RATE * (now - t0)}{ts}',
        "# TYPE footprint_container_allocation_ratio gauge",
        f'footprint_container_allocation_ratio{{{node},{CONTAINER},resource="gpu"}} 0.5{ts}',
        "# TYPE footprint_pue gauge",
        f"footprint_pue{{{node}}} {PUE}{ts}",
        "# TYPE footprint_embodied_grams gauge",
        f'footprint_embodied_grams{{{node},component="server",gpu=""}} {SERVER_GRAMS}{ts}',
        f'footprint_embodied_grams{{{node},component="gpu",gpu="0"}} {GPU_GRAMS}{ts}',
        "# TYPE footprint_embodied_lifetime_seconds gauge",
        f"footprint_embodied_lifetime_seconds{{{node}}} {LIFETIME_SECONDS}{ts}",
        "# TYPE footprint_grid_intensity_grams_per_kwh gauge",
        f'footprint_grid_intensity_grams_per_kwh{{{node},grid_zone="test",provider="static"}} '
        f"{INTENSITY_G_PER_KWH}{ts}",
    ]
    return "\n".join(lines) + "\n"


class SyntheticExporter:
    """A tiny metrics endpoint on 127.0.0.1 whose counters grow at known rates since t0."""

    def __init__(self, t0: float) -> None:
        t = t0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exposition(time.time(), t).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def backfill(tmp_path: Path, tsdb: Path, t0: float, end: float, target: str) -> None:
    """History from t0 to `end`, one sample a second, with the labels scraping will add, so
    the scraped series continue the backfilled ones."""
    extra = f'job="footprint-exporter",instance="{target}",'
    chunks: dict[str, list[str]] = {}
    for k in range(int(end - t0) + 1):
        for line in exposition(t0 + k, t0, timestamp=True).splitlines():
            if line.startswith("#"):
                chunks.setdefault(line, [])
                current = line
            else:
                chunks[current].append(line.replace("{", "{" + extra, 1))
    text = "".join(f"{head}\n" + "".join(f"{s}\n" for s in samples)
                   for head, samples in chunks.items()) + "# EOF\n"
    source = tmp_path / "history.om"
    source.write_text(text)
    done = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source),
                           str(tsdb)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def get_json(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
        return json.loads(response.read())


class Prometheus:
    """The real prometheus binary on a free loopback port; `args` are more flags. With
    `web_config` (its --web.config.file) the URL is https:// when `tls`, and readiness is
    polled with `context` and `headers`."""

    def __init__(self, tmp_path: Path, config: Path, tsdb: Path, *, args: Sequence[str] = (),
                 web_config: Path | None = None, tls: bool = False,
                 context: ssl.SSLContext | None = None,
                 headers: Mapping[str, str] | None = None, name: str = "prometheus") -> None:
        port = closed_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.context, self.headers = context, dict(headers or {})
        self.log = tmp_path / f"{name}.log"
        web = [f"--web.config.file={web_config}"] if web_config is not None else []
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *web, *args],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def logs(self) -> str:
        return self.log.read_text()[-4000:]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.url}/-/ready", headers=self.headers)
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.logs()}"
            try:
                with urllib.request.urlopen(request, timeout=2,
                                            context=self.context) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
