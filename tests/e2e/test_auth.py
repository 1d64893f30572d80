"""Authentication and authorization of the public API (issue 13), through the
real binary: every credential against every route.

What the tests hold the daemon to:

- auth is on when an API key or a JWT key is set; then every API route
  (POST/GET /v1/tasks, GET/DELETE /v1/tasks/{id}, GET .../events,
  GET /v1/commands, GET /v1/me) needs a credential, while the dashboard
  (GET /, /assets/*) and CORS preflights stay open;
- no credential: 401 with `WWW-Authenticate: Bearer realm="taskstream"`;
- a bad credential, whatever is wrong with it (wrong key, expired, not yet
  valid, missing exp or sub, wrong issuer or audience, `alg` not the key's --
  `none`, HS/RS confusion --, a bad signature, malformed, longer than 8 KiB):
  401 with `error="invalid_token"` and byte for byte the same body; only
  `auth_failures_total{reason}` (and the log line) says why;
- user JWTs are verified with the operator's key only (HS256 secret, RSA ->
  RS256, EC P-256 -> ES256), with JWT_LEEWAY for exp/nbf;
- rights: `kinds` globs decide what a user may submit (a command task is named
  by its command), `see` what it may read, cancel and list (a task it may not
  see is exactly the 404 of a task that does not exist), `admin` is the API key;
- stream tokens: minted by the daemon for one task (POST answer, GET of a
  task), read-only, never renewing themselves, accepted from the
  Authorization header, the `access_token` query parameter or the AUTH_COOKIE
  cookie; a cookie credential from a foreign Origin cannot POST or DELETE;
- CORS_ORIGINS: exact origins (or `*`) get the Access-Control-* headers, any
  other origin none;
- no log line holds a token or a key, even at LOG_LEVEL=debug.

Tokens are minted here with PyJWT and cryptography, independently of the
daemon's code; the ones PyJWT refuses to make (alg none, HS256 keyed with an
RSA public key) are put together by hand. Four daemons (HS256, RS256,
ES256, auth off) serve most of the module, each started once; tests that need
their own process (SIGHUP, debug logging, start-up failures) start one.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import signal
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from conftest import DaemonPool
from tshelpers import (SSEStream, check_complete_stream, http, raw_request, scaled, scrape,
                       split_response, wait_for)

API_KEY = "ts-API-k3y-auth-e2e-7f3a9c21e4b8"
WRONG_KEY = "ts-API-k3y-auth-e2e-7f3a9c21e4b9"
DRAIN_KEY = "ts-DRAIN-k3y-auth-e2e-51c0ffee"
HS_SECRET = b"hs256-user-secret-for-the-e2e-tests-0123456789abcdef"
OTHER_SECRET = b"an-entirely-different-hs256-secret-9876543210"
STREAM_SECRET = b"stream-token-secret-of-the-e2e-tests-abcdefgh012345"
ISSUER = "https://issuer.example.test/"
AUDIENCE = "taskstream-e2e"
COOKIE = "ts_session"
STREAM_TTL_S = 600  # STREAM_TOKEN_TTL=10m on the "hs" daemon

ORIGIN = "http://127.0.0.1:5173"
ORIGIN2 = "http://localhost:5174"
FOREIGN = "http://evil.example"

CHALLENGE = 'Bearer realm="taskstream"'
CHALLENGE_INVALID = 'Bearer realm="taskstream", error="invalid_token"'
CHALLENGE_SCOPE = 'Bearer realm="taskstream", error="insufficient_scope"'
INVALID_BODY = {"error": "invalid_token", "message": "the credential is invalid or expired"}

REASONS = ("missing", "invalid_key", "malformed", "algorithm", "signature", "expired",
           "not_yet_valid", "issuer", "audience", "claims", "forbidden", "origin")
FAILURE_METRIC = "auth_failures_total"

TICK = {"kind": "ticker", "count": 3, "interval_ms": 1}
LONG = {"kind": "ticker", "count": 400, "interval_ms": 25}  # 10 s: cancelled by the test
DONE = ("succeeded", "failed", "cancelled")
COMMANDS = ("deploy-prod", "deploy-staging", "greet")
DROP = object()  # a claim override that removes the claim


# --------------------------------------------------------------------------
# JWTs, minted here
# --------------------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unb64(seg):
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def hand_made(header, payload, signature=b"", key=None):
    """header.payload.signature put together by hand; with `key`, an HMAC
    SHA-256 over the first two parts whatever the header says."""
    signing_input = b64json(header) + "." + b64json(payload)
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def now():
    return int(time.time())


def pem_public(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def rfc3339_ts(text):
    assert isinstance(text, str) and text, text
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Keys:
    """The keys of the module and a minting function per daemon."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ec_other = ec.generate_private_key(ec.SECP256R1())
        self.rsa_pem = pem_public(self.rsa)
        self.ec_pem = pem_public(self.ec)
        self.files = {
            "hs_secret": self.write("hs.secret", HS_SECRET + b"\n"),  # one newline: stripped
            "stream_secret": self.write("stream.secret", STREAM_SECRET + b"\n"),
            "rsa_pub": self.write("rsa.pub.pem", self.rsa_pem),
            "ec_pub": self.write("ec.pub.pem", self.ec_pem),
            "commands": self.write("commands.json", json.dumps({"commands": {
                "greet": {"argv": ["/bin/echo", "hello", "{who}"],
                          "params": {"who": {"pattern": "^[a-z]{1,16}$", "default": "world"}},
                          "max_concurrent": 32},
                "deploy-prod": {"argv": ["/bin/echo", "prod"], "max_concurrent": 32},
                "deploy-staging": {"argv": ["/bin/echo", "staging"], "max_concurrent": 32},
            }}).encode()),
        }
        # (algorithm, signing key, iss, aud) of each daemon's users
        self.signers = {
            "hs": ("HS256", HS_SECRET, ISSUER, AUDIENCE),
            "rs": ("RS256", self.rsa, None, None),
            "es": ("ES256", self.ec, None, None),
        }

    def write(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        return path

    def claims(self, conf, sub="alice", kinds=None, see=None, admin=None, task=None, ttl=600,
               **over):
        _, _, iss, aud = self.signers[conf]
        t = now()
        c = {"sub": sub, "iat": t, "exp": t + ttl}
        if iss is not None:
            c["iss"] = iss
        if aud is not None:
            c["aud"] = aud
        ts = {k: v for k, v in (("kinds", kinds), ("see", see), ("admin", admin), ("task", task))
              if v is not None}
        if ts:
            c["taskstream"] = ts
        c.update(over)
        return {k: v for k, v in c.items() if v is not DROP}

    def token(self, conf, *, alg=None, key=None, headers=None, **claims):
        """A user JWT for daemon `conf` signed by PyJWT (with its own key and
        algorithm unless told otherwise)."""
        alg0, key0, _, _ = self.signers[conf]
        return jwt.encode(self.claims(conf, **claims), key if key is not None else key0,
                          algorithm=alg or alg0, headers=headers)

    def stream_token(self, task, key=STREAM_SECRET, ttl=600, exp=None):
        """A stream token as the spec describes the daemon's own."""
        t = now()
        payload = {"iss": "taskstream", "iat": t, "exp": t + ttl if exp is None else exp,
                   "taskstream": {"task": task}}
        return jwt.encode(payload, key, algorithm="HS256", headers={"kid": "taskstream-stream"})


def tampered(token, **changes):
    """`token` with claims changed and its signature kept."""
    h, p, s = token.split(".")
    payload = json.loads(unb64(p))
    payload.update(changes)
    return h + "." + b64json(payload) + "." + s


def alg_none(k, conf, alg="none"):
    return hand_made({"alg": alg, "typ": "JWT"}, k.claims(conf, admin=True))


def hs_rs_confusion(k, conf, pem):
    """HS256, keyed with the public key's PEM bytes: what a verifier that
    trusts the token's alg would accept."""
    return hand_made({"alg": "HS256", "typ": "JWT"}, k.claims(conf, admin=True), key=pem)


def es_der_signature(k):
    """ES256 with an ASN.1 DER signature instead of JWS' raw r || s."""
    tok = k.token("es")
    h, p, s = tok.split(".")
    raw = unb64(s)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    return h + "." + p + "." + b64url(der)


def sized_token(k, length):
    """A valid HS256 user token of exactly `length` characters (or None when
    base64 cannot make that length)."""
    for pad in range(max(0, length * 3 // 4 - 400), length):
        tok = k.token("hs", pad="x" * pad)
        if len(tok) == length:
            return tok
        if len(tok) > length:
            return None
    return None


# --------------------------------------------------------------------------
# daemons: one per configuration for the whole module
# --------------------------------------------------------------------------


def conf_env(name, k):
    f = k.files
    common = {"COMMANDS_FILE": f["commands"], "WORKERS": "8"}
    return {
        # HS256, issuer and audience, the API key, the stream key from a file,
        # a cookie, two CORS origins, and heads big enough for a 100 KB token.
        "hs": {**common, "JWT_SECRET_FILE": f["hs_secret"], "JWT_ISSUER": ISSUER,
               "JWT_AUDIENCE": AUDIENCE, "API_AUTH_KEY": API_KEY,
               "STREAM_TOKEN_SECRET_FILE": f["stream_secret"], "STREAM_TOKEN_TTL": "10m",
               "AUTH_COOKIE": COOKIE, "CORS_ORIGINS": f"{ORIGIN},{ORIGIN2}",
               "MAX_HEADER_BYTES": "256k", "DRAIN_AUTH_KEY": DRAIN_KEY},
        # RS256 with a 2-minute leeway; no API key, no cookie, no CORS,
        # default stream key (random) and TTL, default head size.
        "rs": {**common, "JWT_PUBLIC_KEY_FILE": f["rsa_pub"], "JWT_LEEWAY": "2m"},
        # ES256 without leeway; CORS for everyone.
        "es": {**common, "JWT_PUBLIC_KEY_FILE": f["ec_pub"], "JWT_LEEWAY": "0s",
               "CORS_ORIGINS": "*", "AUTH_COOKIE": COOKIE},
        # Auth off; CORS still applies.
        "open": {**common, "CORS_ORIGINS": ORIGIN},
    }[name]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return Keys(str(tmp_path_factory.mktemp("auth-keys")))


@pytest.fixture(scope="module")
def pool(binary, workdir, keys):
    daemons = DaemonPool(binary, workdir, "test_auth")

    def get(name):
        d = daemons(name, conf_env(name, keys))
        if not hasattr(d, "conf"):
            d.conf = name
            # What the test itself reads tasks with: every right.
            d.master = {"hs": API_KEY, "open": None}.get(name)
            if name in ("rs", "es"):
                d.master = keys.token(name, sub="test-admin", admin=True, ttl=3600)
        return d

    get.daemons = daemons.daemons
    yield get
    daemons.finish()


@pytest.fixture(autouse=True)
def _show_daemon_stderr(request, pool):
    # conftest's report hook appends these daemons' stderr to a failure (a
    # test that starts its own with `daemon` shows those instead).
    request.node._ts_daemons = pool.daemons


@pytest.fixture(scope="module")
def finished(pool):
    """finished(conf) -> the id of a finished 3-tick task on that daemon
    (submitted with its master credential), one per daemon."""
    made = {}

    def get(conf):
        if conf not in made:
            d = pool(conf)
            r = call(d, "POST", "/v1/tasks", d.master, TICK)
            assert r.status == 202, r
            made[conf] = r.json()["id"]
            wait_task(d, made[conf])
        return made[conf]

    return get


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------


def auth_header(cred):
    return {} if cred is None else {"Authorization": f"Bearer {cred}"}


def call(d, method, path, cred=None, body=None, headers=None):
    h = auth_header(cred)
    if path.endswith("/events") or "/events?" in path:
        h["Accept"] = "text/event-stream"
    h.update(headers or {})
    return http(method, d.url + path, body, h)


def wait_task(d, tid, cred=None, states=DONE):
    cred = d.master if cred is None else cred
    found = {}

    def check():
        r = call(d, "GET", f"/v1/tasks/{tid}", cred)
        assert r.status == 200, r
        found["t"] = r.json()
        return found["t"]["state"] in states

    wait_for(check, scaled(15), what=f"task {tid} in {states}")
    return found["t"]


def state_of(d, tid):
    r = call(d, "GET", f"/v1/tasks/{tid}", d.master)
    assert r.status == 200, r
    return r.json()["state"]


def submit(d, cred, body=TICK, status=202):
    r = call(d, "POST", "/v1/tasks", cred, body)
    assert r.status == status, r
    return r.json()


def cancel(d, tid):
    r = call(d, "DELETE", f"/v1/tasks/{tid}", d.master)
    assert r.status in (202, 409), r


def read_stream(d, tid, cred=None, headers=None, query=""):
    """The whole event stream of a (finished) task: (events, response headers)."""
    h = auth_header(cred)
    h.update(headers or {})
    with SSEStream(f"{d.url}/v1/tasks/{tid}/events{query}", headers=h,
                   timeout=scaled(15)) as s:
        assert s.status == 200, (s.status, s.headers, getattr(s, "body", b""))
        events = s.read_all(scaled(15))
        assert s.clean_end, s.error
        return events, s.headers


def routes(tid):
    """(name, method, path, body) of every API route, on task `tid`."""
    return [
        ("POST /v1/tasks", "POST", "/v1/tasks", TICK),
        ("GET /v1/tasks", "GET", "/v1/tasks", None),
        ("GET /v1/tasks/{id}", "GET", f"/v1/tasks/{tid}", None),
        ("DELETE /v1/tasks/{id}", "DELETE", f"/v1/tasks/{tid}", None),
        ("GET /v1/tasks/{id}/events", "GET", f"/v1/tasks/{tid}/events", None),
        ("GET /v1/commands", "GET", "/v1/commands", None),
        ("GET /v1/me", "GET", "/v1/me", None),
    ]


def command(name):
    return {"kind": "command", "command": name}


# --------------------------------------------------------------------------
# answers
# --------------------------------------------------------------------------


def json_of(r):
    assert r.headers.get("Content-Type", "").startswith("application/json"), (r, r.headers)
    return r.json()


def assert_invalid_token(r, what=""):
    assert r.status == 401, (what, r)
    assert r.headers.get("WWW-Authenticate") == CHALLENGE_INVALID, (what, r.headers)
    assert json_of(r) == INVALID_BODY, (what, r)


def assert_missing(r, what=""):
    assert r.status == 401, (what, r)
    assert r.headers.get("WWW-Authenticate") == CHALLENGE, (what, r.headers)
    doc = json_of(r)
    assert doc.get("error") == "unauthorized", (what, doc)
    assert isinstance(doc.get("message"), str) and doc["message"], doc


def assert_forbidden(r, what=""):
    assert r.status == 403, (what, r)
    assert r.headers.get("WWW-Authenticate") == CHALLENGE_SCOPE, (what, r.headers)
    doc = json_of(r)
    assert doc.get("error") == "forbidden", (what, doc)
    assert isinstance(doc.get("message"), str) and doc["message"], doc


def assert_like_unknown(d, r, tid, cred, method="GET", suffix=""):
    """`r` is exactly the 404 a task that does not exist gets."""
    ghost = uuid.uuid4().hex
    ref = call(d, method, f"/v1/tasks/{ghost}{suffix}", cred)
    assert ref.status == 404 and json_of(ref)["error"] == "unknown_task", ref
    assert r.status == 404, r
    assert r.body == ref.body.replace(ghost.encode(), tid.encode()), (r.body, ref.body)
    assert r.headers.get("Content-Type") == ref.headers.get("Content-Type")
    assert r.headers.get("WWW-Authenticate") == ref.headers.get("WWW-Authenticate")


def failure_metric(m):
    assert m.find(FAILURE_METRIC), f"no {FAILURE_METRIC} in {sorted(m.names())}"
    return FAILURE_METRIC


def failures(d):
    m = scrape(d)
    return {dict(labels).get("reason"): v for labels, v in m.find(failure_metric(m)).items()}


def counted(d, before):
    """{reason: increase} since `before`."""
    after = failures(d)
    return {r: after[r] - before.get(r, 0) for r in after if after[r] != before.get(r, 0)}


def assert_counted(d, before, reasons, n):
    """Exactly `n` failures were counted since `before`, all under one reason
    out of `reasons`; return it."""
    delta = counted(d, before)
    assert len(delta) == 1 and set(delta) <= set(reasons) and list(delta.values()) == [n], (
        f"expected {n} failures counted under one of {reasons}, got {delta}")
    return next(iter(delta))


def cors_headers(r):
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("access-control-")}


def header_set(value):
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def vary(r):
    return header_set(", ".join(r.headers.get_all("Vary") or []))


def me(d, cred, **kw):
    r = call(d, "GET", "/v1/me", cred, **kw)
    assert r.status == 200, r
    return json_of(r)


def raw_get(d, path, extra_headers):
    """A GET over a plain socket (for heads past MAX_HEADER_BYTES: the server
    may answer and close before it read everything): (status, headers)."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in extra_headers.items())
    data = (head + "Connection: close\r\n\r\n").encode()
    status, headers, _, _ = split_response(raw_request("127.0.0.1", d.port, data))
    return status, headers


# --------------------------------------------------------------------------
# bad credentials: the table
# --------------------------------------------------------------------------


class Case:
    def __init__(self, id_, conf, build, reasons):
        self.id, self.conf, self.build, self.reasons = id_, conf, build, reasons

    def __repr__(self):
        return self.id


BAD = [
    # -- hs: HS256, issuer, audience, API key, leeway 30 s (the default) --
    Case("wrong-api-key", "hs", lambda k: WRONG_KEY, ("invalid_key",)),
    Case("api-key-prefix", "hs", lambda k: API_KEY[:-1], ("invalid_key",)),
    Case("api-key-longer", "hs", lambda k: API_KEY + "x", ("invalid_key",)),
    Case("expired", "hs", lambda k: k.token("hs", exp=now() - 3600), ("expired",)),
    Case("expired-past-leeway", "hs", lambda k: k.token("hs", exp=now() - 90), ("expired",)),
    Case("not-yet-valid", "hs", lambda k: k.token("hs", nbf=now() + 3600), ("not_yet_valid",)),
    Case("nbf-past-leeway", "hs", lambda k: k.token("hs", nbf=now() + 120), ("not_yet_valid",)),
    Case("missing-exp", "hs", lambda k: k.token("hs", exp=DROP), ("claims",)),
    Case("exp-not-a-number", "hs", lambda k: k.token("hs", exp="tomorrow"), ("claims",)),
    Case("missing-sub", "hs", lambda k: k.token("hs", sub=DROP), ("claims",)),
    Case("sub-not-a-string", "hs", lambda k: k.token("hs", sub=42), ("claims",)),
    Case("wrong-issuer", "hs", lambda k: k.token("hs", iss="https://other.example/"), ("issuer",)),
    Case("issuer-prefix", "hs", lambda k: k.token("hs", iss=ISSUER[:-1]), ("issuer",)),
    Case("missing-issuer", "hs", lambda k: k.token("hs", iss=DROP), ("issuer",)),
    Case("wrong-audience", "hs", lambda k: k.token("hs", aud="someone-else"), ("audience",)),
    Case("audience-array-without-ours", "hs",
         lambda k: k.token("hs", aud=["someone-else", AUDIENCE + "x"]), ("audience",)),
    Case("missing-audience", "hs", lambda k: k.token("hs", aud=DROP), ("audience",)),
    Case("alg-none", "hs", lambda k: alg_none(k, "hs"), ("algorithm",)),
    Case("alg-None", "hs", lambda k: alg_none(k, "hs", "None"), ("algorithm",)),
    Case("alg-none-with-hmac", "hs",
         lambda k: hand_made({"alg": "none"}, k.claims("hs"), key=HS_SECRET), ("algorithm",)),
    Case("alg-HS512-same-secret", "hs", lambda k: k.token("hs", alg="HS512"), ("algorithm",)),
    Case("alg-RS256-on-hs", "hs", lambda k: k.token("hs", alg="RS256", key=k.rsa), ("algorithm",)),
    Case("wrong-secret", "hs", lambda k: k.token("hs", key=OTHER_SECRET), ("signature",)),
    Case("secret-with-its-newline", "hs", lambda k: k.token("hs", key=HS_SECRET + b"\n"),
         ("signature",)),
    Case("tampered-sub", "hs", lambda k: tampered(k.token("hs", kinds=["ticker"]), sub="mallory"),
         ("signature",)),
    Case("tampered-admin", "hs", lambda k: tampered(k.token("hs"), taskstream={"admin": True}),
         ("signature",)),
    Case("tampered-exp", "hs",
         lambda k: tampered(k.token("hs", exp=now() - 3600), exp=now() + 3600), ("signature",)),
    Case("signature-stripped", "hs", lambda k: k.token("hs").rsplit(".", 1)[0] + ".",
         ("signature", "malformed")),
    # base64url is read strictly: a good token with anything added is no
    # longer good.
    Case("junk-after-signature", "hs", lambda k: k.token("hs", admin=True) + "!!",
         ("signature", "malformed")),
    Case("base64-after-signature", "hs", lambda k: k.token("hs", admin=True) + "AAAA",
         ("signature", "malformed")),
    Case("padding-after-signature", "hs", lambda k: k.token("hs", admin=True) + "=",
         ("signature", "malformed")),
    Case("junk-inside-signature", "hs",
         lambda k: (lambda t: t[:-10] + "*" + t[-10:])(k.token("hs", admin=True)),
         ("signature", "malformed")),
    Case("junk-inside-payload", "hs",
         lambda k: (lambda h, p, g: f"{h}.{p[:8]}~{p[8:]}.{g}")(*k.token("hs").split(".")),
         ("signature", "malformed")),
    Case("rs-junk-after-signature", "rs", lambda k: k.token("rs", admin=True) + "%21",
         ("signature", "malformed")),
    Case("malformed-base64", "hs", lambda k: "eyJhbGciOiJIUzI1NiJ9.*not~base64*.c2ln",
         ("malformed",)),
    Case("header-not-json", "hs",
         lambda k: b64url(b"not json") + "." + k.token("hs").split(".", 1)[1], ("malformed",)),
    Case("payload-not-json", "hs",
         lambda k: b64json({"alg": "HS256", "typ": "JWT"}) + "." + b64url(b"{oops") + "." + "c2ln",
         ("malformed", "signature")),
    Case("three-dots", "hs", lambda k: "...", ("malformed",)),
    Case("two-parts", "hs", lambda k: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0", ("malformed",)),
    Case("stream-token-wrong-key", "hs", lambda k: k.stream_token(uuid.uuid4().hex,
                                                                  key=OTHER_SECRET),
         ("signature",)),
    Case("stream-token-signed-with-user-secret", "hs",
         lambda k: k.stream_token(uuid.uuid4().hex, key=HS_SECRET), ("signature", "issuer")),
    Case("stream-token-expired", "hs", lambda k: k.stream_token(uuid.uuid4().hex,
                                                                exp=now() - 3600),
         ("expired",)),
    # -- rs: RS256, leeway 2 minutes --
    Case("rs-hs-confusion", "rs", lambda k: hs_rs_confusion(k, "rs", k.rsa_pem), ("algorithm",)),
    Case("rs-hs-confusion-pem-without-newline", "rs",
         lambda k: hs_rs_confusion(k, "rs", k.rsa_pem.rstrip(b"\n")), ("algorithm",)),
    Case("rs-alg-none", "rs", lambda k: alg_none(k, "rs"), ("algorithm",)),
    Case("rs-RS512-same-key", "rs", lambda k: k.token("rs", alg="RS512"), ("algorithm",)),
    Case("rs-PS256-same-key", "rs", lambda k: k.token("rs", alg="PS256"), ("algorithm",)),
    Case("rs-ES256", "rs", lambda k: k.token("rs", alg="ES256", key=k.ec), ("algorithm",)),
    Case("rs-other-key", "rs", lambda k: k.token("rs", key=k.rsa_other), ("signature",)),
    Case("rs-tampered", "rs", lambda k: tampered(k.token("rs"), sub="mallory"), ("signature",)),
    Case("rs-expired-past-leeway", "rs", lambda k: k.token("rs", exp=now() - 300), ("expired",)),
    Case("rs-not-yet-valid", "rs", lambda k: k.token("rs", nbf=now() + 600), ("not_yet_valid",)),
    Case("rs-missing-exp", "rs", lambda k: k.token("rs", exp=DROP), ("claims",)),
    Case("rs-not-a-jwt", "rs", lambda k: WRONG_KEY, ("malformed",)),  # no API key configured
    Case("rs-stream-token-of-another-key", "rs", lambda k: k.stream_token(uuid.uuid4().hex),
         ("signature",)),
    # -- es: ES256, no leeway --
    Case("es-hs-confusion", "es", lambda k: hs_rs_confusion(k, "es", k.ec_pem), ("algorithm",)),
    Case("es-alg-none", "es", lambda k: alg_none(k, "es"), ("algorithm",)),
    Case("es-ES384-header", "es",
         lambda k: b64json({"alg": "ES384", "typ": "JWT"}) + "." + k.token("es").split(".", 1)[1],
         ("algorithm",)),
    Case("es-RS256", "es", lambda k: k.token("es", alg="RS256", key=k.rsa), ("algorithm",)),
    Case("es-other-key", "es", lambda k: k.token("es", key=k.ec_other), ("signature",)),
    Case("es-der-signature", "es", es_der_signature, ("signature", "malformed")),
    Case("es-tampered", "es", lambda k: tampered(k.token("es"), sub="mallory"), ("signature",)),
    Case("es-expired-no-leeway", "es", lambda k: k.token("es", exp=now() - 5), ("expired",)),
    Case("es-nbf-no-leeway", "es", lambda k: k.token("es", nbf=now() + 20), ("not_yet_valid",)),
]

# One 401 body per daemon, seen by the first bad credential: every later one
# must be the same bytes.
FIRST_401 = {}


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_credential_is_401_on_every_route(pool, keys, finished, case):
    d = pool(case.conf)
    tid = finished(case.conf)
    cred = case.build(keys)
    before = failures(d)
    bodies = set()
    for name, method, path, body in routes(tid):
        r = call(d, method, path, cred, body)
        assert_invalid_token(r, f"{case.id}: {name}")
        bodies.add(r.body)
    assert len(bodies) == 1, bodies
    first = FIRST_401.setdefault(case.conf, next(iter(bodies)))
    assert bodies == {first}, "the 401 body differs from one reason to another"
    reason = assert_counted(d, before, case.reasons, len(routes(tid)))
    # The dashboard stays open whatever the request carries, and the task is
    # as it was (the DELETE did nothing, no task was added).
    for path in ("/", "/assets/app.js"):
        assert call(d, "GET", path, cred).status == 200, path
    assert counted(d, before) == {reason: len(routes(tid))}
    assert wait_task(d, tid)["state"] == "succeeded"


@pytest.mark.parametrize("value,accepted", [
    (f"Bearer {API_KEY}", True),
    (f"bearer {API_KEY}", True),  # the scheme is case-insensitive (RFC 9110 11.1)
    (f"BEARER {API_KEY}", True),
    (f"Basic {API_KEY}", False),
    (f"Basic {b64url(b'user:' + API_KEY.encode())}", False),
    (API_KEY, False),  # no scheme
    ("Bearer", False),
    (f"Bearer{API_KEY}", False),
    (f"Token {API_KEY}", False),
], ids=["Bearer", "bearer", "BEARER", "Basic-key", "Basic-userpass", "no-scheme", "bare-scheme",
        "no-space", "Token"])
def test_authorization_header_forms(pool, value, accepted):
    """An Authorization header that is there but not a Bearer credential is a
    bad credential (not a missing one), and no other source rescues it."""
    d = pool("hs")
    before = failures(d)
    r = http("GET", f"{d.url}/v1/me?access_token={API_KEY}", headers={"Authorization": value})
    if accepted:
        assert r.status == 200 and json_of(r)["auth"] == "key", r
        assert counted(d, before) == {}
    else:
        assert_invalid_token(r, value)
        assert_counted(d, before, ("malformed", "invalid_key"), 1)


@pytest.mark.parametrize("conf", ["hs", "rs", "es"])
def test_no_credential_is_401_with_the_bearer_challenge(pool, finished, conf):
    d = pool(conf)
    tid = finished(conf)
    before = failures(d)
    for name, method, path, body in routes(tid):
        assert_missing(call(d, method, path, None, body), name)
        # A cookie that is not AUTH_COOKIE, an unrelated query parameter:
        # still nothing.
        r = call(d, method, path + "?token=" + API_KEY, None, body,
                 headers={"Cookie": f"session={API_KEY}; {COOKIE}x=1"})
        assert_missing(r, name)
    assert_counted(d, before, ("missing",), 2 * len(routes(tid)))
    for path in ("/", "/assets/app.js", "/assets/style.css"):
        r = call(d, "GET", path)
        assert r.status == 200, (path, r)
    assert call(d, "GET", "/").headers["Content-Type"].startswith("text/html")
    assert counted(d, before) == {"missing": 2 * len(routes(tid))}


def test_every_failure_reason_is_a_series_from_the_start(pool):
    m = scrape(pool("rs"))
    name = failure_metric(m)
    assert m.types.get(name) == "counter", m.types.get(name)
    reasons = {dict(labels).get("reason") for labels in m.find(name)}
    assert reasons == set(REASONS), reasons


# --------------------------------------------------------------------------
# credentials that are accepted
# --------------------------------------------------------------------------

GOOD = [
    Case("hs-user", "hs", lambda k: k.token("hs"), "jwt"),
    Case("hs-api-key", "hs", lambda k: API_KEY, "key"),
    Case("hs-expired-inside-leeway", "hs", lambda k: k.token("hs", exp=now() - 10), "jwt"),
    Case("hs-nbf-inside-leeway", "hs", lambda k: k.token("hs", nbf=now() + 10), "jwt"),
    Case("hs-nbf-past", "hs", lambda k: k.token("hs", nbf=now() - 100), "jwt"),
    Case("hs-audience-array-with-ours", "hs",
         lambda k: k.token("hs", aud=["someone-else", AUDIENCE]), "jwt"),
    Case("hs-kid-header", "hs", lambda k: k.token("hs", headers={"kid": "user-key-1"}), "jwt"),
    Case("hs-no-typ", "hs",
         lambda k: hand_made({"alg": "HS256"}, k.claims("hs"), key=HS_SECRET), "jwt"),
    Case("rs-user", "rs", lambda k: k.token("rs"), "jwt"),
    Case("rs-expired-inside-2m-leeway", "rs", lambda k: k.token("rs", exp=now() - 90), "jwt"),
    Case("rs-audience-unchecked-when-unset", "rs", lambda k: k.token("rs", aud="anyone"), "jwt"),
    Case("rs-issuer-unchecked-when-unset", "rs", lambda k: k.token("rs", iss="anyone"), "jwt"),
    Case("es-user", "es", lambda k: k.token("es"), "jwt"),
    Case("es-exp-just-ahead", "es", lambda k: k.token("es", exp=now() + 20), "jwt"),
]


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_accepted_credential(pool, keys, case):
    d = pool(case.conf)
    cred = case.build(keys)
    before = failures(d)
    who = me(d, cred)
    assert who["auth"] == case.reasons, who
    if case.reasons == "jwt":
        assert who["sub"] == "alice", who
    r = call(d, "GET", "/v1/tasks", cred)
    assert r.status == 200, r
    assert isinstance(json_of(r)["tasks"], list)
    assert counted(d, before) == {}


# --------------------------------------------------------------------------
# a user on every route, with each algorithm
# --------------------------------------------------------------------------


def check_stream_token(answer, tid, ttl_s):
    """The stream token of an answer, in the spec's format (kid, iss, the
    task, exp = stream_token_expires_at = now + the TTL); returns it."""
    tok = answer["stream_token"]
    exp_at = rfc3339_ts(answer["stream_token_expires_at"])
    assert abs(exp_at - (time.time() + ttl_s)) < 30, (answer["stream_token_expires_at"], ttl_s)
    header = jwt.get_unverified_header(tok)
    assert header.get("alg") == "HS256" and header.get("kid") == "taskstream-stream", header
    claims = jwt.decode(tok, options={"verify_signature": False})
    assert claims["iss"] == "taskstream", claims
    assert claims["taskstream"]["task"] == tid, claims
    assert abs(claims["exp"] - exp_at) <= 1, (claims, answer)
    return tok


@pytest.mark.parametrize("conf", ["hs", "rs", "es"])
def test_user_token_on_every_route(pool, keys, conf):
    d = pool(conf)
    sub = f"user-{conf}-{uuid.uuid4().hex[:8]}"
    exp = now() + 900
    cred = keys.token(conf, sub=sub, kinds=["ticker", "greet"], see="own", exp=exp)
    ttl = STREAM_TTL_S if conf == "hs" else 3600
    before = failures(d)

    # POST: 202, the task, who submitted it, and a stream token for it.
    r = call(d, "POST", "/v1/tasks", cred, TICK)
    assert r.status == 202, r
    t = json_of(r)
    tid = t["id"]
    assert r.headers["Location"] == f"/v1/tasks/{tid}"
    assert t["submitted_by"] == sub, t
    post_token = check_stream_token(t, tid, ttl)
    if conf == "hs":
        jwt.decode(post_token, STREAM_SECRET, algorithms=["HS256"], issuer="taskstream",
                   options={"verify_aud": False})

    # GET: its own task, with a fresh stream token.
    done = wait_task(d, tid, cred)
    assert done["state"] == "succeeded" and done["submitted_by"] == sub, done
    get_token = check_stream_token(done, tid, ttl)

    # The events: with the user token, and with each stream token.
    for c in (cred, post_token, get_token):
        events, _ = read_stream(d, tid, c)
        check_complete_stream(events, 3)

    # The list: this user's tasks only.
    r = call(d, "GET", "/v1/tasks", cred)
    assert r.status == 200, r
    listed = json_of(r)["tasks"]
    assert [x["id"] for x in listed] == [tid], listed
    assert listed[0]["submitted_by"] == sub

    # DELETE: a running task of its own.
    long_ = submit(d, cred, LONG)
    r = call(d, "DELETE", f"/v1/tasks/{long_['id']}", cred)
    assert r.status == 202, r
    assert wait_task(d, long_["id"], cred)["state"] == "cancelled"
    # ... and a finished one is a conflict, as without auth.
    assert call(d, "DELETE", f"/v1/tasks/{tid}", cred).status == 409

    # The commands it may submit, and a command task.
    r = call(d, "GET", "/v1/commands", cred)
    assert r.status == 200, r
    assert [c["name"] for c in json_of(r)["commands"]] == ["greet"]
    g = submit(d, cred, {"kind": "command", "command": "greet", "params": {"who": "ada"}})
    assert g["submitted_by"] == sub
    assert wait_task(d, g["id"], cred)["state"] == "succeeded"

    who = me(d, cred)
    assert who["auth"] == "jwt" and who["sub"] == sub, who
    assert who["admin"] is False and who["see"] == "own", who
    assert who["kinds"] == ["ticker", "greet"], who
    assert abs(rfc3339_ts(who["expires_at"]) - exp) <= 1, who
    assert "task" not in who or who["task"] in (None, ""), who

    assert call(d, "GET", "/").status == 200
    assert counted(d, before) == {}


def test_api_key_on_every_route(pool, keys):
    d = pool("hs")
    before = failures(d)
    r = call(d, "POST", "/v1/tasks", API_KEY, TICK)
    assert r.status == 202, r
    t = json_of(r)
    tid = t["id"]
    assert t.get("submitted_by") is None, t
    check_stream_token(t, tid, STREAM_TTL_S)
    done = wait_task(d, tid, API_KEY)
    assert done.get("submitted_by") is None, done
    check_stream_token(done, tid, STREAM_TTL_S)
    events, _ = read_stream(d, tid, API_KEY)
    check_complete_stream(events, 3)

    # Every user's tasks are in the key's list.
    u = submit(d, keys.token("hs", sub="listed-user", kinds=["ticker"]))
    ids = [x["id"] for x in json_of(call(d, "GET", "/v1/tasks", API_KEY))["tasks"]]
    assert tid in ids and u["id"] in ids
    assert wait_task(d, u["id"], API_KEY)["submitted_by"] == "listed-user"

    for name in COMMANDS:
        g = submit(d, API_KEY, command(name))
        assert wait_task(d, g["id"])["state"] == "succeeded"
    r = call(d, "GET", "/v1/commands", API_KEY)
    assert sorted(c["name"] for c in json_of(r)["commands"]) == list(COMMANDS)

    long_ = submit(d, API_KEY, LONG)
    assert call(d, "DELETE", f"/v1/tasks/{long_['id']}", API_KEY).status == 202
    assert wait_task(d, long_["id"])["state"] == "cancelled"

    assert me(d, API_KEY)["auth"] == "key"
    # The key from the query string and from the cookie counts too.
    assert json_of(call(d, "GET", f"/v1/me?access_token={API_KEY}"))["auth"] == "key"
    assert me(d, None, headers={"Cookie": f"{COOKIE}={API_KEY}"})["auth"] == "key"
    assert counted(d, before) == {}


def test_neither_the_api_key_nor_an_admin_opens_drain(pool, keys):
    d = pool("hs")
    for cred in (API_KEY, keys.token("hs", sub="root", admin=True)):
        for method in ("POST", "DELETE"):
            r = http(method, d.admin_url + "/drain", headers=auth_header(cred))
            assert r.status == 401, r
    assert d.readyz() == 200


# --------------------------------------------------------------------------
# rights
# --------------------------------------------------------------------------

# (kinds claim, what is submitted, allowed?)
KINDS = [
    (["tick*"], "ticker", True),
    (["tick*"], "greet", False),
    (["ticker"], "ticker", True),
    (["tick"], "ticker", False),
    (["Ticker"], "ticker", False),
    (["ticker"], "greet", False),
    (["greet"], "greet", True),
    (["gr*"], "greet", True),
    (["g?eet"], "greet", True),
    (["greet"], "ticker", False),
    (["gr*"], "deploy-prod", False),
    (["deploy-*"], "deploy-prod", True),
    (["deploy-*"], "deploy-staging", True),
    (["deploy-*"], "greet", False),
    (["deploy-prod"], "deploy-staging", False),
    (["command"], "greet", False),  # a command task is named by its command
    (["*"], "greet", True),
    (["*"], "ticker", True),
    ([], "ticker", False),
    (None, "ticker", False),  # no claim at all: nothing
    (None, "greet", False),
]


@pytest.mark.parametrize("kinds,name,allowed", KINDS,
                         ids=[f"{k}-{n}".replace(" ", "") for k, n, _ in KINDS])
def test_kinds_globs_decide_what_may_be_submitted(pool, keys, kinds, name, allowed):
    d = pool("hs")
    cred = keys.token("hs", sub="globber", kinds=kinds)
    body = TICK if name == "ticker" else command(name)
    before = failures(d)
    r = call(d, "POST", "/v1/tasks", cred, body)
    if allowed:
        assert r.status == 202, r
        t = json_of(r)
        assert t["submitted_by"] == "globber"
        assert wait_task(d, t["id"])["state"] == "succeeded"
        assert counted(d, before) == {}
    else:
        assert_forbidden(r, name)
        assert_counted(d, before, ("forbidden",), 1)


@pytest.mark.parametrize("kinds,listed", [
    (None, []),
    ([], []),
    (["tick*"], []),
    (["greet"], ["greet"]),
    (["gr*"], ["greet"]),
    (["deploy-*"], ["deploy-prod", "deploy-staging"]),
    (["deploy-prod", "greet"], ["deploy-prod", "greet"]),
    (["*"], list(COMMANDS)),
], ids=lambda v: str(v).replace(" ", ""))
def test_commands_list_holds_what_may_be_submitted(pool, keys, kinds, listed):
    d = pool("hs")
    r = call(d, "GET", "/v1/commands", keys.token("hs", kinds=kinds))
    assert r.status == 200, r
    assert sorted(c["name"] for c in json_of(r)["commands"]) == listed


def test_see_own_hides_other_users_tasks(pool, keys):
    d = pool("hs")
    alice = keys.token("hs", sub="alice", kinds=["ticker"], see="own")
    alice_upper = keys.token("hs", sub="Alice", kinds=["ticker"], see="own")
    bob = keys.token("hs", sub="bob", kinds=["ticker"])  # see: own by default
    a = submit(d, alice)["id"]
    b = submit(d, bob)["id"]
    k = submit(d, API_KEY)["id"]  # submitted by nobody: no user's own
    for tid in (a, b, k):
        wait_task(d, tid)

    got = call(d, "GET", f"/v1/tasks/{a}", alice)
    assert got.status == 200 and json_of(got)["submitted_by"] == "alice"
    for other in (b, k):
        assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{other}", alice), other, alice)
        assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{other}/events", alice), other, alice,
                            suffix="/events")
        # Finished: a visible task would be 409; an invisible one is 404.
        assert_like_unknown(d, call(d, "DELETE", f"/v1/tasks/{other}", alice), other, alice,
                            method="DELETE")
    # sub is compared exactly.
    assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{a}", alice_upper), a, alice_upper)

    for cred, sub, mine, not_mine in ((alice, "alice", a, (b, k)), (bob, "bob", b, (a, k))):
        r = call(d, "GET", "/v1/tasks", cred)
        assert r.status == 200, r
        tasks = json_of(r)["tasks"]
        ids = [x["id"] for x in tasks]
        assert mine in ids and not set(not_mine) & set(ids), (sub, ids)
        assert {x["submitted_by"] for x in tasks} == {sub}
        # The state filter still applies on top.
        r = call(d, "GET", "/v1/tasks?state=running", cred)
        assert mine not in [x["id"] for x in json_of(r)["tasks"]]
    assert json_of(call(d, "GET", "/v1/tasks", alice_upper))["tasks"] == []

    # Cancelling: only its own running task.
    long_ = submit(d, alice, LONG)["id"]
    try:
        wait_task(d, long_, states=("running",))
        assert_like_unknown(d, call(d, "DELETE", f"/v1/tasks/{long_}", bob), long_, bob,
                            method="DELETE")
        assert state_of(d, long_) == "running"
        r = call(d, "DELETE", f"/v1/tasks/{long_}", alice)
        assert r.status == 202, r
        assert wait_task(d, long_)["state"] == "cancelled"
    finally:
        cancel(d, long_)
    assert call(d, "DELETE", f"/v1/tasks/{a}", alice).status == 409


def test_see_all_reads_lists_and_cancels_every_task(pool, keys):
    d = pool("hs")
    alice = keys.token("hs", sub="alice", kinds=["ticker"])
    carol = keys.token("hs", sub="carol", see="all")  # may read everything, submit nothing
    a = submit(d, alice)["id"]
    k = submit(d, API_KEY)["id"]
    for tid in (a, k):
        wait_task(d, tid)
    ids = [x["id"] for x in json_of(call(d, "GET", "/v1/tasks", carol))["tasks"]]
    assert a in ids and k in ids
    for tid in (a, k):
        r = call(d, "GET", f"/v1/tasks/{tid}", carol)
        assert r.status == 200, r
        check_stream_token(json_of(r), tid, STREAM_TTL_S)
        check_complete_stream(read_stream(d, tid, carol)[0], 3)
    long_ = submit(d, alice, LONG)["id"]
    try:
        r = call(d, "DELETE", f"/v1/tasks/{long_}", carol)
        assert r.status == 202, r
        assert wait_task(d, long_)["state"] == "cancelled"
    finally:
        cancel(d, long_)
    assert_forbidden(call(d, "POST", "/v1/tasks", carol, TICK))
    assert json_of(call(d, "GET", "/v1/commands", carol))["commands"] == []
    who = me(d, carol)
    assert who["see"] == "all" and who["admin"] is False and who["kinds"] == [], who


def test_admin_claim_has_every_right_of_the_key(pool, keys):
    d = pool("hs")
    root = keys.token("hs", sub="root", admin=True)  # no kinds, see own: admin wins
    alice = keys.token("hs", sub="alice", kinds=["ticker"])
    a = submit(d, alice)["id"]
    for body in (TICK, command("greet"), command("deploy-prod")):
        t = submit(d, root, body)
        assert t["submitted_by"] == "root"
        assert wait_task(d, t["id"])["state"] == "succeeded"
    wait_task(d, a)
    ids = [x["id"] for x in json_of(call(d, "GET", "/v1/tasks", root))["tasks"]]
    assert a in ids
    r = call(d, "GET", f"/v1/tasks/{a}", root)
    assert r.status == 200 and "stream_token" in json_of(r)
    assert sorted(c["name"] for c in json_of(call(d, "GET", "/v1/commands", root))["commands"]) \
        == list(COMMANDS)
    long_ = submit(d, alice, LONG)["id"]
    try:
        assert call(d, "DELETE", f"/v1/tasks/{long_}", root).status == 202
        assert wait_task(d, long_)["state"] == "cancelled"
    finally:
        cancel(d, long_)
    assert me(d, root)["admin"] is True


# --------------------------------------------------------------------------
# stream tokens
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_tasks(pool):
    """Two finished tasks A and B on "hs" and the stream token of each, from
    their POST answers."""
    d = pool("hs")
    a = submit(d, API_KEY)
    b = submit(d, API_KEY)
    for t in (a, b):
        wait_task(d, t["id"])
    return a["id"], a["stream_token"], b["id"], b["stream_token"]


def test_stream_token_reads_its_task_only(pool, two_tasks):
    d = pool("hs")
    a, tok_a, b, _ = two_tasks
    r = call(d, "GET", f"/v1/tasks/{a}", tok_a)
    assert r.status == 200, r
    t = json_of(r)
    assert t["id"] == a
    # A stream token cannot renew itself.
    assert "stream_token" not in t and "stream_token_expires_at" not in t, t
    check_complete_stream(read_stream(d, a, tok_a)[0], 3)

    # Another task: as if it did not exist.
    assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{b}", tok_a), b, tok_a)
    assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{b}/events", tok_a), b, tok_a,
                        suffix="/events")

    # Read-only: no cancel, no submit, no list, no commands.
    before = failures(d)
    for method, path, body in (("DELETE", f"/v1/tasks/{a}", None), ("POST", "/v1/tasks", TICK),
                               ("GET", "/v1/tasks", None), ("GET", "/v1/commands", None)):
        assert_forbidden(call(d, method, path, tok_a, body), f"{method} {path}")
    assert counted(d, before) == {"forbidden": 4}

    who = me(d, tok_a)
    assert who["auth"] == "stream" and who["task"] == a, who
    assert abs(rfc3339_ts(who["expires_at"]) - jwt.decode(
        tok_a, options={"verify_signature": False})["exp"]) <= 1, who
    assert call(d, "GET", "/", tok_a).status == 200


def test_stream_token_from_query_and_cookie_streams_to_the_end(pool, two_tasks):
    d = pool("hs")
    a, tok_a, b, tok_b = two_tasks
    before = failures(d)
    events, _ = read_stream(d, a, query=f"?access_token={tok_a}")
    check_complete_stream(events, 3)
    events, _ = read_stream(d, a, query=f"?last_event_id=1&access_token={tok_a}")
    assert [e.id for e in events] == ["2", "3", "4"], events
    events, _ = read_stream(d, a, headers={"Cookie": f"{COOKIE}={tok_a}"})
    check_complete_stream(events, 3)
    events, _ = read_stream(d, b, headers={"Cookie": f"theme=dark; {COOKIE}={tok_b}"})
    check_complete_stream(events, 3)
    r = call(d, "GET", f"/v1/tasks/{a}?access_token={tok_a}")
    assert r.status == 200 and json_of(r)["id"] == a
    assert me(d, None, headers={"Cookie": f"{COOKIE}={tok_b}"})["task"] == b
    # The token of A, however it comes, does not read B.
    assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{b}/events?access_token={tok_a}"), b, tok_a,
                        suffix="/events")
    assert counted(d, before) == {}


@pytest.mark.parametrize("jar", [
    pytest.param("{c}={t}", id="only"),
    pytest.param("theme=dark; {c}={t}", id="last"),
    pytest.param("{c}={t}; theme=dark", id="first"),
    pytest.param("lang=en; {c}={t}; theme=dark", id="middle"),
    pytest.param("lang=en;{c}={t};theme=dark", id="middle-no-spaces"),
    pytest.param('{c}="{t}"; theme=dark', id="quoted-first"),
])
def test_auth_cookie_among_other_cookies(pool, two_tasks, jar):
    """A browser sends every cookie of the site in one header, in an order
    of its own."""
    d = pool("hs")
    a, tok_a, _, _ = two_tasks
    h = {"Cookie": jar.format(c=COOKIE, t=tok_a)}
    assert me(d, None, headers=h)["task"] == a
    check_complete_stream(read_stream(d, a, headers=h)[0], 3)


def test_the_first_credential_present_is_the_one_used(pool, keys, two_tasks):
    """Authorization, then access_token, then the cookie; a bad first one
    is not rescued by a good later one."""
    d = pool("hs")
    a, tok_a, _, _ = two_tasks
    bad = keys.token("hs", exp=now() - 3600)
    path = f"/v1/tasks/{a}"
    assert call(d, "GET", f"{path}?access_token={bad}", tok_a).status == 200
    assert call(d, "GET", path, tok_a, headers={"Cookie": f"{COOKIE}={bad}"}).status == 200
    assert call(d, "GET", f"{path}?access_token={tok_a}",
                headers={"Cookie": f"{COOKIE}={bad}"}).status == 200
    before = failures(d)
    assert_invalid_token(call(d, "GET", f"{path}?access_token={tok_a}", bad))
    assert_invalid_token(call(d, "GET", path, bad, headers={"Cookie": f"{COOKIE}={tok_a}"}))
    assert_invalid_token(call(d, "GET", f"{path}?access_token={bad}",
                              headers={"Cookie": f"{COOKIE}={tok_a}"}))
    assert_counted(d, before, ("expired",), 3)


def test_stream_token_minted_with_the_configured_key_is_honoured(pool, keys, two_tasks):
    """STREAM_TOKEN_SECRET_FILE is the key (what lets replicas share tokens):
    a token made with it reads its task; a forged task claim does not."""
    d = pool("hs")
    a, _, b, _ = two_tasks
    mine = keys.stream_token(b)
    check_complete_stream(read_stream(d, b, mine)[0], 3)
    assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{a}", mine), a, mine)
    assert_forbidden(call(d, "DELETE", f"/v1/tasks/{b}", mine))


def test_user_token_with_a_task_claim_is_a_stream_token(pool, keys, two_tasks):
    d = pool("hs")
    a, _, b, _ = two_tasks
    cred = keys.token("hs", sub="alice", kinds=["*"], see="all", admin=True, task=a)
    r = call(d, "GET", f"/v1/tasks/{a}", cred)
    assert r.status == 200, r
    assert "stream_token" not in json_of(r)
    check_complete_stream(read_stream(d, a, cred)[0], 3)
    assert_like_unknown(d, call(d, "GET", f"/v1/tasks/{b}", cred), b, cred)
    for method, path, body in (("DELETE", f"/v1/tasks/{a}", None), ("POST", "/v1/tasks", TICK),
                               ("GET", "/v1/tasks", None), ("GET", "/v1/commands", None)):
        assert_forbidden(call(d, method, path, cred, body), f"{method} {path}")
    assert me(d, cred)["task"] == a


def test_stream_tokens_have_the_default_ttl(pool, keys):
    d = pool("rs")
    cred = keys.token("rs", sub="ttl", kinds=["ticker"])
    t = submit(d, cred)
    tok = check_stream_token(t, t["id"], 3600)
    wait_task(d, t["id"])
    check_complete_stream(read_stream(d, t["id"], tok)[0], 3)
    # Another daemon's stream key does not verify it.
    other = pool("es")
    assert_invalid_token(call(other, "GET", f"/v1/tasks/{t['id']}", tok))


def test_cookie_is_not_read_without_auth_cookie(pool, keys, finished):
    d = pool("rs")
    tid = finished("rs")
    cred = keys.token("rs", sub="test-admin", admin=True)
    assert call(d, "GET", f"/v1/tasks/{tid}", cred).status == 200
    for name in (COOKIE, "access_token", "token", "Authorization"):
        assert_missing(call(d, "GET", f"/v1/tasks/{tid}", headers={"Cookie": f"{name}={cred}"}))


# --------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------


def test_a_100_kb_token_is_refused_and_the_daemon_serves_on(pool, keys, finished):
    big = keys.token("hs", admin=True, pad="x" * 100_000)  # validly signed
    assert len(big) > 100_000
    # hs (MAX_HEADER_BYTES=256k): the head is read, the credential refused.
    d = pool("hs")
    tid = finished("hs")
    before = failures(d)
    for name, method, path, body in routes(tid):
        assert_invalid_token(call(d, method, path, big, body), name)
    r = call(d, "GET", f"/v1/me?access_token={big}")
    assert_invalid_token(r)
    assert_counted(d, before, ("malformed",), len(routes(tid)) + 1)
    assert me(d, API_KEY)["auth"] == "key"

    # rs (default MAX_HEADER_BYTES): the head limit answers first, with a
    # clear 4xx.
    d = pool("rs")
    tok = keys.token("rs", admin=True, pad="x" * 100_000)
    for path, headers in (("/v1/me", {"Authorization": f"Bearer {tok}"}),
                          (f"/v1/me?access_token={tok}", {}),
                          ("/v1/me", {"Cookie": f"{COOKIE}={tok}"})):
        status, _ = raw_get(d, path, headers)
        assert status in (401, 414, 431), (status, path[:20], list(headers))
    assert me(d, d.master)["admin"] is True
    assert d.healthz() == 200
    t = submit(d, d.master)
    assert wait_task(d, t["id"])["state"] == "succeeded"


def test_credentials_up_to_8_kib(pool, keys):
    d = pool("hs")
    ok = next(t for n in range(8192, 8180, -1) if (t := sized_token(keys, n)) is not None)
    too_long = next(t for n in range(8193, 8205) if (t := sized_token(keys, n)) is not None)
    assert len(ok) <= 8192 < len(too_long)
    assert me(d, ok)["sub"] == "alice"
    before = failures(d)
    assert_invalid_token(call(d, "GET", "/v1/me", too_long))
    assert_counted(d, before, ("malformed",), 1)


# --------------------------------------------------------------------------
# CORS and CSRF
# --------------------------------------------------------------------------

ROUTE_METHODS = [
    ("/v1/tasks", {"GET", "POST"}),
    ("/v1/tasks/{id}", {"GET", "DELETE"}),
    ("/v1/tasks/{id}/events", {"GET"}),
    ("/v1/commands", {"GET"}),
    ("/v1/me", {"GET"}),
]


def preflight(d, path, origin, method="GET"):
    h = {"Access-Control-Request-Method": method,
         "Access-Control-Request-Headers": "authorization, content-type"}
    if origin is not None:
        h["Origin"] = origin
    return http("OPTIONS", d.url + path, headers=h)


def check_preflight_allowed(r, origin, methods, credentials):
    assert r.status == 204, r
    h = cors_headers(r)
    assert h.get("access-control-allow-origin") == origin, h
    if credentials:
        assert h.get("access-control-allow-credentials") == "true", h
    else:
        assert "access-control-allow-credentials" not in h, h
    allowed = {m.upper() for m in header_set(h.get("access-control-allow-methods"))}
    assert methods <= allowed <= methods | {"HEAD", "OPTIONS"}, allowed
    assert header_set(h.get("access-control-allow-headers")) == {
        "authorization", "content-type", "last-event-id"}, h
    assert h.get("access-control-max-age") == "600", h
    if origin != "*":  # with "*" the answer does not depend on the Origin
        assert "origin" in vary(r), r.headers


def check_allowed(r, origin, credentials):
    """`r`: a Response, or the headers of one."""
    headers = getattr(r, "headers", r)
    h = {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}
    assert h.get("access-control-allow-origin") == origin, (r, h)
    if credentials:
        assert h.get("access-control-allow-credentials") == "true", h
    else:
        assert "access-control-allow-credentials" not in h, h
    assert header_set(h.get("access-control-expose-headers")) == {
        "location", "retry-after", "www-authenticate"}, h
    if origin != "*":  # with "*" the answer does not depend on the Origin
        assert "origin" in header_set(", ".join(headers.get_all("Vary") or [])), headers


@pytest.mark.parametrize("path,methods", ROUTE_METHODS, ids=[p for p, _ in ROUTE_METHODS])
def test_preflight_from_an_allowed_origin(pool, finished, path, methods):
    d = pool("hs")
    path = path.replace("{id}", finished("hs"))
    before = failures(d)
    for origin in (ORIGIN, ORIGIN2):
        check_preflight_allowed(preflight(d, path, origin, sorted(methods)[-1]), origin, methods,
                                credentials=True)
    # Another origin, a look-alike, or none: 204 and no Access-Control-* at all.
    for origin in (FOREIGN, ORIGIN + "0", ORIGIN[:-1], ORIGIN + "/", ORIGIN.upper(),
                   "https://127.0.0.1:5173", "null", f"{ORIGIN},{FOREIGN}", None):
        r = preflight(d, path, origin)
        assert r.status == 204, (origin, r)
        assert cors_headers(r) == {}, (origin, r.headers)
    assert counted(d, before) == {}  # no credential needed


def test_cors_on_answers_for_an_allowed_origin(pool, finished):
    d = pool("hs")
    tid = finished("hs")
    r = call(d, "GET", "/v1/tasks", API_KEY, headers={"Origin": ORIGIN})
    assert r.status == 200
    check_allowed(r, ORIGIN, credentials=True)
    r = call(d, "POST", "/v1/tasks", API_KEY, TICK, headers={"Origin": ORIGIN2})
    assert r.status == 202
    check_allowed(r, ORIGIN2, credentials=True)
    # A 401 too: the page must be able to read it.
    r = call(d, "GET", "/v1/tasks", None, headers={"Origin": ORIGIN})
    assert_missing(r)
    check_allowed(r, ORIGIN, credentials=True)
    # And an event stream.
    _, headers = read_stream(d, tid, API_KEY, headers={"Origin": ORIGIN})
    check_allowed(headers, ORIGIN, credentials=True)
    # A foreign origin: nothing.
    for origin in (FOREIGN, "null", ORIGIN + "0"):
        r = call(d, "GET", "/v1/tasks", API_KEY, headers={"Origin": origin})
        assert r.status == 200 and cors_headers(r) == {}, (origin, r.headers)
    with SSEStream(f"{d.url}/v1/tasks/{tid}/events",
                   headers={**auth_header(API_KEY), "Origin": FOREIGN}) as s:
        assert s.status == 200
        assert not [k for k in s.headers.keys() if k.lower().startswith("access-control-")]


@pytest.mark.parametrize("conf,origin,expected", [
    ("hs", ORIGIN, ORIGIN), ("es", FOREIGN, "*"), ("open", ORIGIN, ORIGIN)])
def test_cors_exposes_location_retry_after_and_www_authenticate(pool, conf, origin, expected):
    d = pool(conf)
    for cred in (d.master, None):  # a 202 (or on "open" twice), and a 401
        r = call(d, "POST", "/v1/tasks", cred, TICK, headers={"Origin": origin})
        check_allowed(r, expected, credentials=expected != "*")


def test_cors_star_allows_every_origin_without_credentials(pool, keys):
    d = pool("es")
    cred = d.master
    for origin in (ORIGIN, FOREIGN, "http://anything.example:1234"):
        r = call(d, "GET", "/v1/tasks", cred, headers={"Origin": origin})
        assert r.status == 200
        check_allowed(r, "*", credentials=False)
        check_preflight_allowed(preflight(d, "/v1/tasks", origin, "POST"), "*", {"GET", "POST"},
                                credentials=False)


def test_no_cors_headers_when_cors_origins_is_unset(pool):
    d = pool("rs")
    r = call(d, "GET", "/v1/tasks", d.master, headers={"Origin": ORIGIN})
    assert r.status == 200 and cors_headers(r) == {}, r.headers
    r = preflight(d, "/v1/tasks", ORIGIN, "POST")
    assert r.status == 204 and cors_headers(r) == {}, r.headers


def test_cookie_credential_from_a_foreign_origin_cannot_post_or_delete(pool, keys):
    d = pool("hs")
    alice = keys.token("hs", sub="alice", kinds=["ticker"])
    jar = {"Cookie": f"{COOKIE}={alice}"}
    own = f"http://127.0.0.1:{d.port}"
    long_ = submit(d, alice, LONG)["id"]
    try:
        before = failures(d)
        for origin in (FOREIGN, "null", ORIGIN + "0", f"http://127.0.0.1:{d.port + 1}"):
            for method, path, body in (("DELETE", f"/v1/tasks/{long_}", None),
                                       ("POST", "/v1/tasks", TICK)):
                r = call(d, method, path, body=body, headers={**jar, "Origin": origin})
                # (not a scope the credential lacks: no challenge required)
                assert r.status == 403 and json_of(r)["error"] == "forbidden", (origin, r)
        assert_counted(d, before, ("origin",), 8)
        assert state_of(d, long_) in ("queued", "running")
        # Reads with the cookie are fine from anywhere (CORS keeps the body
        # from a foreign page).
        r = call(d, "GET", f"/v1/tasks/{long_}", headers={**jar, "Origin": FOREIGN})
        assert r.status == 200, r
        # The server's own origin, an allowed one, or no Origin: accepted.
        for origin in (own, ORIGIN, None):
            h = dict(jar) if origin is None else {**jar, "Origin": origin}
            r = call(d, "POST", "/v1/tasks", body=TICK, headers=h)
            assert r.status == 202, (origin, r)
            assert json_of(r)["submitted_by"] == "alice"
        # A header credential is no CSRF risk: a foreign Origin does not matter.
        r = call(d, "POST", "/v1/tasks", alice, TICK, headers={"Origin": FOREIGN})
        assert r.status == 202, r
        r = call(d, "DELETE", f"/v1/tasks/{long_}", headers={**jar, "Origin": ORIGIN})
        assert r.status == 202, r
        assert wait_task(d, long_)["state"] == "cancelled"
    finally:
        cancel(d, long_)


# --------------------------------------------------------------------------
# auth off
# --------------------------------------------------------------------------


def test_auth_off_is_open_and_mints_nothing(pool):
    d = pool("open")
    r = http("POST", d.url + "/v1/tasks", TICK)
    assert r.status == 202, r
    t = json_of(r)
    assert "stream_token" not in t and "stream_token_expires_at" not in t, t
    assert t.get("submitted_by") is None
    done = wait_task(d, t["id"])
    assert "stream_token" not in done
    for name, method, path, body in routes(t["id"]):
        r = call(d, method, path, "whatever-credential", body)
        assert r.status in (200, 202, 409), (name, r)
    assert me(d, None)["auth"] == "open"
    check_complete_stream(read_stream(d, t["id"])[0], 3)
    # CORS still applies.
    r = call(d, "GET", "/v1/tasks", headers={"Origin": ORIGIN})
    check_allowed(r, ORIGIN, credentials=True)
    r = call(d, "GET", "/v1/tasks", headers={"Origin": FOREIGN})
    assert cors_headers(r) == {}
    check_preflight_allowed(preflight(d, "/v1/tasks", ORIGIN, "POST"), ORIGIN, {"GET", "POST"},
                            credentials=True)
    m = scrape(d)
    assert set(m.find(FAILURE_METRIC).values()) == {0}, m.find(FAILURE_METRIC)


# --------------------------------------------------------------------------
# processes of their own: reload, logs, start-up
# --------------------------------------------------------------------------


def hup(d, result, count):
    d.signal(signal.SIGHUP)
    wait_for(lambda: len(d.logs("reload", result=result)) >= count, scaled(10),
             what=f"reload #{count} {result}")


def test_sighup_rereads_the_jwt_secret(daemon, tmp_path, keys):
    secret_file = tmp_path / "jwt.secret"
    old = b"0123456789abcdef0123456789ABCDEF"  # exactly 32 bytes: enough
    new = b"fedcba9876543210FEDCBA9876543210-new"
    secret_file.write_bytes(old + b"\n")
    os.chmod(secret_file, 0o600)
    d = daemon({"JWT_SECRET_FILE": str(secret_file)})
    claims = {"sub": "rot", "exp": now() + 600, "taskstream": {"kinds": ["ticker"]}}
    tok_old = jwt.encode(claims, old, algorithm="HS256")
    tok_new = jwt.encode(claims, new, algorithm="HS256")
    assert me(d, tok_old)["sub"] == "rot"
    t = submit(d, tok_old)
    stream_tok = t["stream_token"]
    assert_invalid_token(call(d, "GET", "/v1/me", tok_new))

    secret_file.write_bytes(new + b"\n")
    hup(d, "ok", 1)
    before = failures(d)
    assert_invalid_token(call(d, "GET", "/v1/me", tok_old))
    assert_counted(d, before, ("signature",), 1)
    assert me(d, tok_new)["sub"] == "rot"
    # The stream key (random, per process) survives a reload.
    wait_task(d, t["id"], tok_new)
    check_complete_stream(read_stream(d, t["id"], stream_tok)[0], 3)

    # A secret that became too short: refused as a whole, the old one stays.
    d.expect_error("reload")
    secret_file.write_bytes(b"short-secret\n")
    hup(d, "failed", 1)
    assert me(d, tok_new)["sub"] == "rot"
    assert "short-secret" not in d.raw_stderr()
    for s in (old, new):
        assert s.decode() not in d.raw_stderr()


def test_sighup_rereads_the_public_key_and_the_stream_key(daemon, tmp_path, keys):
    pub, stream = tmp_path / "jwt.pub.pem", tmp_path / "stream.secret"
    new_stream = b"the-rotated-stream-token-secret-0123456789"
    pub.write_bytes(keys.rsa_pem)
    stream.write_bytes(STREAM_SECRET + b"\n")
    for f in (pub, stream):
        os.chmod(f, 0o600)
    d = daemon({"JWT_PUBLIC_KEY_FILE": str(pub), "STREAM_TOKEN_SECRET_FILE": str(stream)})
    old = keys.token("rs", sub="rot", kinds=["ticker"], see="all")
    new = keys.token("rs", sub="rot", kinds=["ticker"], see="all", key=keys.rsa_other)
    t = submit(d, old)
    wait_task(d, t["id"], old)
    assert call(d, "GET", f"/v1/tasks/{t['id']}", t["stream_token"]).status == 200
    assert_invalid_token(call(d, "GET", "/v1/me", new))

    pub.write_bytes(pem_public(keys.rsa_other))
    stream.write_bytes(new_stream + b"\n")
    hup(d, "ok", 1)
    before = failures(d)
    assert_invalid_token(call(d, "GET", "/v1/me", old))
    assert_invalid_token(call(d, "GET", f"/v1/tasks/{t['id']}", t["stream_token"]))
    assert_counted(d, before, ("signature",), 2)
    assert me(d, new)["sub"] == "rot"
    fresh = keys.stream_token(t["id"], key=new_stream)
    check_complete_stream(read_stream(d, t["id"], fresh)[0], 3)
    text = d.raw_stderr()
    assert STREAM_SECRET.decode() not in text and new_stream.decode() not in text


def test_no_token_or_key_is_ever_logged(daemon, tmp_path, keys):
    d = daemon({"LOG_LEVEL": "debug", "JWT_SECRET_FILE": keys.files["hs_secret"],
                "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE, "API_AUTH_KEY": API_KEY,
                "STREAM_TOKEN_SECRET_FILE": keys.files["stream_secret"],
                "AUTH_COOKIE": COOKIE, "CORS_ORIGINS": ORIGIN,
                "COMMANDS_FILE": keys.files["commands"]})
    user = keys.token("hs", sub="logged-user", kinds=["ticker", "greet"])
    expired = keys.token("hs", exp=now() - 3600)
    bad_sig = keys.token("hs", key=OTHER_SECRET)
    forged = tampered(keys.token("hs"), taskstream={"admin": True})
    none = alg_none(keys, "hs")
    secrets = {"API_KEY": API_KEY, "WRONG_KEY": WRONG_KEY, "HS_SECRET": HS_SECRET.decode(),
               "STREAM_SECRET": STREAM_SECRET.decode(), "user": user, "expired": expired,
               "bad_sig": bad_sig, "forged": forged, "none": none}

    t1 = submit(d, API_KEY)
    secrets["stream_token_post_key"] = t1["stream_token"]
    t2 = submit(d, user)
    secrets["stream_token_post_user"] = t2["stream_token"]
    g = submit(d, user, command("greet"))
    for t in (t1, t2, g):
        wait_task(d, t["id"], API_KEY)
    r = call(d, "GET", f"/v1/tasks/{t2['id']}", user)
    secrets["stream_token_get"] = json_of(r)["stream_token"]
    assert json_of(call(d, "GET", f"/v1/me?access_token={API_KEY}"))["auth"] == "key"
    assert me(d, None, headers={"Cookie": f"{COOKIE}={user}"})["sub"] == "logged-user"
    events, _ = read_stream(d, t1["id"], query=f"?access_token={t1['stream_token']}")
    check_complete_stream(events, 3)
    events, _ = read_stream(d, t2["id"],
                            headers={"Cookie": f"{COOKIE}={secrets['stream_token_get']}"})
    check_complete_stream(events, 3)
    assert_forbidden(call(d, "DELETE", f"/v1/tasks/{t1['id']}", t1["stream_token"]))
    assert call(d, "DELETE", f"/v1/tasks/{t2['id']}", headers={
        "Cookie": f"{COOKIE}={user}", "Origin": FOREIGN}).status == 403
    for cred in (WRONG_KEY, expired, bad_sig, forged, none):
        assert_invalid_token(call(d, "GET", "/v1/tasks", cred))
        assert_invalid_token(call(d, "GET", f"/v1/tasks?access_token={cred}"))
        assert_invalid_token(call(d, "GET", f"/v1/tasks/{t1['id']}/events?access_token={cred}"))
        assert_invalid_token(call(d, "GET", "/v1/me", headers={"Cookie": f"{COOKIE}={cred}"}))

    # The log says why each was refused.
    for reason in ("invalid_key", "expired", "signature", "algorithm", "forbidden", "origin"):
        assert any(reason in [v for v in e.values() if isinstance(v, str)] for e in d.logs()), (
            f"no log line names the reason {reason}")

    assert d.stop() == 0
    text = d.raw_stderr() + "\n" + d._stdout.decode("utf-8", "replace")
    for name, s in secrets.items():
        assert s not in text, f"{name} is in the log"
        if s.count(".") == 2:  # a JWT: not even its signature
            sig = s.rsplit(".", 1)[1]
            if sig:
                assert sig not in text, f"the signature of {name} is in the log"


def test_jwt_keys_are_checked_at_start_up(run_once, tmp_file, keys):
    ec384 = ec.generate_private_key(ec.SECP384R1())
    short = tmp_file("short.secret", "x" * 31 + "\n")  # 31 bytes once the newline is stripped
    cases = [
        ({"JWT_SECRET_FILE": short}, ("JWT_SECRET_FILE",)),
        ({"JWT_SECRET_FILE": tmp_file("empty.secret", b"")}, ("JWT_SECRET_FILE",)),
        ({"JWT_SECRET_FILE": "/nonexistent/jwt.secret"}, ("JWT_SECRET_FILE",)),
        ({"JWT_SECRET_FILE": keys.files["hs_secret"], "JWT_PUBLIC_KEY_FILE": keys.files["rsa_pub"]},
         ("JWT_SECRET_FILE", "JWT_PUBLIC_KEY_FILE")),
        ({"JWT_PUBLIC_KEY_FILE": tmp_file("garbage.pem", "-----BEGIN PUBLIC KEY-----\nnope\n"
                                                         "-----END PUBLIC KEY-----\n")},
         ("JWT_PUBLIC_KEY_FILE",)),
        ({"JWT_PUBLIC_KEY_FILE": tmp_file("p384.pem", pem_public(ec384))},
         ("JWT_PUBLIC_KEY_FILE",)),
        ({"JWT_PUBLIC_KEY_FILE": keys.files["hs_secret"]}, ("JWT_PUBLIC_KEY_FILE",)),
        ({"API_AUTH_KEY": API_KEY, "STREAM_TOKEN_SECRET_FILE": short},
         ("STREAM_TOKEN_SECRET_FILE",)),
        # Cluster mode with auth on: stream tokens must verify on every replica.
        ({"API_AUTH_KEY": API_KEY, "REDIS_URL": "redis://127.0.0.1:1"},
         ("STREAM_TOKEN_SECRET_FILE",)),
        ({"JWT_SECRET_FILE": keys.files["hs_secret"], "REDIS_URL": "redis://127.0.0.1:1"},
         ("STREAM_TOKEN_SECRET_FILE",)),
    ]
    for env, names in cases:
        res = run_once(env)
        assert res.returncode == 2, (env, res.returncode, res.stderr[-2000:])
        assert any(n in res.stderr for n in names), (env, res.stderr[-2000:])
        assert "listening" not in res.stderr
        for secret in (HS_SECRET.decode(), "x" * 31, API_KEY):
            assert secret not in res.stderr + res.stdout, env
