"""Who may see and do what, in cluster mode: the rights hold on every
replica, whichever replica a task was submitted on.

- A stream token handed out by one replica follows its task on another
  (STREAM_TOKEN_SECRET_FILE is shared), and no other task.
- A user with "see": "own" finds only their own tasks in every replica's
  list; another user's task is a 404 on GET, DELETE and its events on every
  replica, exactly as a task that does not exist.
- Cluster mode with authentication refuses to start without
  STREAM_TOKEN_SECRET_FILE: a random key per replica would make one
  replica's tokens useless on the next.

Tokens are minted with python3-jwt, independently of the daemon's code.
"""

import time

import jwt
import pytest

from cluster import REDIS_SERVER, cluster, have_redis, redis, redis_server  # noqa: F401
from tshelpers import SSEStream, assert_json_error, check_complete_stream, http, scaled

pytestmark = pytest.mark.skipif(not have_redis(),
                                reason=f"redis-server not installed at {REDIS_SERVER}")

SECRET = b"cluster-auth-test-secret-of-32-bytes+"
STREAM_SECRET = b"the-stream-token-key-shared-by-every-replica"


def user_token(sub, see="own", kinds=("ticker",), admin=False):
    claim = {"kinds": list(kinds), "see": see, "admin": admin}
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, "taskstream": claim}, SECRET,
                      algorithm="HS256")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(cluster, tmp_file):
    """Two replicas with users' JWTs (HS256) and one stream-token key."""
    env = {"JWT_SECRET_FILE": tmp_file("jwt.key", SECRET),
           "STREAM_TOKEN_SECRET_FILE": tmp_file("stream.key", STREAM_SECRET)}
    return cluster(2, env=env)


def submit(d, token, **params):
    body = {"kind": "ticker", "count": 3, "interval_ms": 10}
    body.update(params)
    r = http("POST", f"{d.url}/v1/tasks", body, headers=bearer(token))
    assert r.status == 202, r
    return r.json()


def test_stream_token_of_one_replica_follows_on_another(secured):
    a, b = secured
    alice = user_token("alice")
    task = submit(a, alice)
    assert task["submitted_by"] == "alice"
    url = f"{b.url}/v1/tasks/{task['id']}/events?access_token={task['stream_token']}"
    with SSEStream(url) as s:
        check_complete_stream(s.read_all(timeout=scaled(15)), 3)
    other = submit(b, alice)
    r = http("GET", f"{a.url}/v1/tasks/{other['id']}/events?access_token={task['stream_token']}")
    assert_json_error(r, 404, "unknown_task")
    # A stream token reads; it never cancels, lists or submits, on any replica.
    for d in secured:
        for method, path in (("DELETE", f"/v1/tasks/{task['id']}"), ("GET", "/v1/tasks")):
            r = http(method, d.url + path, headers=bearer(task["stream_token"]))
            assert_json_error(r, 403, "forbidden")


def test_see_own_holds_on_every_replica(secured):
    a, b = secured
    alice, bob = user_token("alice"), user_token("bob")
    admin = user_token("root", admin=True)
    long_task = submit(a, alice, count=1000, interval_ms=50)
    bobs = submit(b, bob)
    for d in secured:
        mine = [t["id"] for t in http("GET", f"{d.url}/v1/tasks", headers=bearer(bob)).json()["tasks"]]
        assert mine == [bobs["id"]], (d.replica_id, mine)
        everyone = http("GET", f"{d.url}/v1/tasks", headers=bearer(admin)).json()["tasks"]
        assert {t["id"] for t in everyone} == {long_task["id"], bobs["id"]}
        for method, tail in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
            r = http(method, f"{d.url}/v1/tasks/{long_task['id']}{tail}", headers=bearer(bob))
            assert_json_error(r, 404, "unknown_task")
            unknown = http(method, f"{d.url}/v1/tasks/{'0' * 32}{tail}", headers=bearer(bob))
            assert r.json() == {**unknown.json(), "message": r.json()["message"]}
            assert r.json()["message"].replace(long_task["id"], "0" * 32) == unknown.json()["message"]
    r = http("DELETE", f"{b.url}/v1/tasks/{long_task['id']}", headers=bearer(alice))
    assert r.status == 202, r


def test_cluster_with_auth_needs_a_shared_stream_key(run_once, redis, tmp_file):
    res = run_once(env={"REDIS_URL": redis.url, "API_AUTH_KEY": "a-master-key",
                        "LISTEN": "127.0.0.1:0", "ADMIN_LISTEN": "127.0.0.1:0"})
    assert res.returncode == 2, res.stderr
    assert "STREAM_TOKEN_SECRET_FILE" in res.stderr, res.stderr
