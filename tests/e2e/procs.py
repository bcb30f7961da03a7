"""Real processes for end-to-end tests: `farebox sim` and `farebox serve`, each started
with `python -m farebox` on a free port (port 0, read back from the line the command
prints once it is listening)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from farebox.catalog.simulated import sim_catalog

READY_S = 30

# A provider whose every answer is a 503 (the simulator's URL-prefix control), a model
# only it serves, and a model it serves more cheaply than the working simulator, so the
# router tries it first and must fail over; likewise an Anthropic endpoint that is always
# overloaded (529) in front of a Gemini one, to fail over across dialects.
# Fault injection (issue 4): providers that always fail, fail half the time, hang, answer
# garbage or cut the stream before its first token, all cheaper than the one good endpoint.
FAULTS = (("down", "status=503"), ("half", "fail_rate=0.5"), ("hang", "hang=1"), ("garbage", "garbage=1"),
          ("cut", "cut_after=0"))

BROKEN = """
[providers.sim-broken]
name = "Broken Simulator"
dialect = "openai"
base_url = "{sim}/_sim/status=503/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "sim/broken"
name = "Simulated: always failing"
context_length = 128000

[[models.endpoints]]
provider = "sim-broken"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}

[[models]]
id = "sim/flaky"
name = "Simulated: one failing endpoint"
context_length = 128000

[[models.endpoints]]
provider = "sim-broken"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{ prompt = "0.0000001", completion = "0.0000004" }}

[[models.endpoints]]
provider = "sim"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}

[providers.sim-overloaded-anthropic]
name = "Overloaded Anthropic"
dialect = "anthropic"
base_url = "{sim}/_sim/status=529"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "sim/claude-or-gemini"
name = "Simulated: an overloaded Anthropic endpoint, then a Gemini one"
context_length = 128000

[[models.endpoints]]
provider = "sim-overloaded-anthropic"
model = "sim-claude"
max_completion_tokens = 16384
pricing = {{ prompt = "0.0000001", completion = "0.0000004" }}

[[models.endpoints]]
provider = "sim-google"
model = "sim-gemini"
max_completion_tokens = 16384
pricing = {{ prompt = "0.0000003", completion = "0.0000025" }}
""" + "".join(f"""
[providers.sim-{name}]
name = "Faulty: {name}"
dialect = "openai"
base_url = "{{sim}}/_sim/{control}/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false
""" for name, control in FAULTS) + """
[[models]]
id = "sim/faulty"
name = "Simulated: five faulty endpoints and one good one (the dearest)"
context_length = 128000
""" + "".join(f"""
[[models.endpoints]]
provider = "sim-{name}"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{{{ prompt = "0.0000001", completion = "0.0000004" }}}}
""" for name, _ in FAULTS) + """
[[models.endpoints]]
provider = "sim"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}
"""


# A provider whose key the operator never configured (the variable is never set): its model
# is unroutable except for a workspace that brings its own key (BYOK). And a model served
# only by a provider that trains on and retains prompts (privacy settings exclude it).
KEYED = """
[providers.sim-keyed]
name = "Keyed Simulator"
dialect = "openai"
base_url = "{sim}/v1"
api_key = "env:FAREBOX_TEST_NEVER_SET_KEY"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "sim/keyed"
name = "Simulated: needs the workspace's own key"
context_length = 128000

[[models.endpoints]]
provider = "sim-keyed"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}

[providers.sim-leaky]
name = "Leaky Simulator"
dialect = "openai"
base_url = "{sim}/v1"
api_key = "none"
trains_on_prompts = true
retains_prompts = true

[[models]]
id = "sim/leaky"
name = "Simulated: only a provider that trains on and retains prompts"
context_length = 128000

[[models.endpoints]]
provider = "sim-leaky"
model = "sim-small"
max_completion_tokens = 16384
pricing = {{ prompt = "0.00000015", completion = "0.0000006" }}
"""


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], ready: str) -> None:
        self.args = args
        self.lines: list[str] = []
        self.popen = subprocess.Popen([sys.executable, "-m", "farebox", *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._ready = threading.Event()
        self._pattern = re.compile(ready)
        self.match: re.Match[str] | None = None
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(READY_S) or self.match is None:
            self.stop()
            raise RuntimeError(f"farebox {' '.join(args)} did not start:\n" + "".join(self.lines[-50:]))

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            if self.match is None:
                self.match = self._pattern.search(line)
                if self.match:
                    self._ready.set()
        self._ready.set()

    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """kill -9: no shutdown, no flush, nothing."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_sim() -> tuple[Proc, str]:
    proc = Proc(["sim", "--port", "0"], dict(os.environ), r"listening on (http://\S+)")
    assert proc.match is not None
    return proc, proc.match.group(1)


def http(method: str, url: str, body: Any = None, key: str | None = None,
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
            return response.status, _json(payload), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read()), dict(e.headers)


def member_token(gw: Gateway, org: str, role: str = "owner", email: str | None = None, **fields: Any) -> str:
    """A logged-in member of `org` with `role` (created with the management key): the session
    token to send as the bearer."""
    token, _ = gw.member(org, email or f"{role}-{next(_emails)}@{org}.example", role, **fields)
    return token


_emails = itertools.count()


def _json(payload: bytes) -> Any:
    try:
        # USD amounts are exact decimals on the wire; never read them as floats.
        return json.loads(payload, parse_float=Decimal) if payload else None
    except ValueError:
        return payload.decode(errors="replace")


@dataclass
class Gateway:
    home: Path
    sim_url: str
    env_overrides: dict[str, str] = field(default_factory=dict)
    catalog_extra: str = ""  # more catalog TOML, `{sim}` standing for the simulator's URL
    proc: Proc | None = None
    url: str = ""
    management_key: str = ""

    def start(self) -> Gateway:
        self.home.mkdir(parents=True, exist_ok=True)
        catalog = self.home / "catalog.toml"
        catalog.write_text(sim_catalog(f"{self.sim_url}/v1") + BROKEN.format(sim=self.sim_url)
                           + KEYED.format(sim=self.sim_url) + self.catalog_extra.replace("{sim}", self.sim_url))
        env = dict(os.environ)
        env.update({"FAREBOX_HOME": str(self.home), "FAREBOX_PORT": "0", "FAREBOX_CATALOG_PATH": str(catalog),
                    "FAREBOX_CATALOG_BUILTIN": "false", "FAREBOX_LOG_LEVEL": "warning",
                    # the smallest scrypt cost: member passwords hash in a millisecond
                    "FAREBOX_PASSWORD_SCRYPT_N": "1024"})
        env.update(self.env_overrides)
        self.proc = Proc(["serve"], env, r"farebox serving on (http://\S+)")
        assert self.proc.match is not None
        self.url = self.proc.match.group(1)
        self.management_key = (self.home / "management_key").read_text().strip()
        return self

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        status, data, _ = http(method, self.api + path, body, self.management_key)
        assert status < 300, (status, data)
        return data

    def org(self, name: str, credits: str | None = None) -> str:
        self.admin("POST", "/organizations", {"name": name})
        if credits is not None:
            self.admin("POST", f"/organizations/{name}/credits", {"amount": credits, "reference": f"{name}-initial"})
        return name

    def key(self, org: str, **options: Any) -> tuple[str, str]:
        data = self.admin("POST", "/keys", {"organization": org, "name": options.pop("name", "test"), **options})
        return data["key"], data["data"]["hash"]

    def member(self, org: str, email: str, role: str = "owner", password: str = "correct horse battery",
               **fields: Any) -> tuple[str, str]:
        """Create a member of `org` with the management key and log them in: (session token,
        member id)."""
        created = self.admin("POST", "/organization/members", {"organization": org, "email": email,
                                                                "password": password, "role": role, **fields})
        return self.login(org, email, password), created["data"]["id"]

    def login(self, org: str, email: str, password: str) -> str:
        status, data, _ = http("POST", self.api + "/auth/login",
                               {"organization": org, "email": email, "password": password})
        assert status == 200, (status, data)
        return data["data"]["token"]

    def balance(self, org: str) -> Decimal:
        """The organization's balance in USD, exactly."""
        return Decimal(self.admin("GET", f"/organizations/{org}")["data"]["balance"])

    def verify(self) -> dict[str, Any]:
        return self.admin("GET", "/ledger/verify")["data"]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no hold is open (every in-flight request has settled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.verify()["counts"].get("open_holds", 0) == 0:
                return
            time.sleep(0.05)
        raise AssertionError("holds still open")
