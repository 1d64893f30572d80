"""Check real answers of taskstreamd against docs/openapi.yaml.

`Spec().check(method, path, status, headers, body, listener)` finds the
operation (the route template matched from the path, HEAD answered as GET)
and its response for `status` (resolving $ref), then checks the declared
content type, the required headers and every declared header that is
present, and the body: JSON against its schema with the Draft 2020-12
validator (OpenAPI 3.1 schemas are 2020-12), an event stream frame by frame
against `x-taskstream-events`, no body where none is declared. A status the
operation does not declare is a mismatch. Requests no operation takes are
checked against `x-taskstream-unrouted`. `check()` returns the list of
problems (empty: the answer conforms) and records the (operation, status)
pair in `produced`; `declared()` lists every pair the file declares.

tests/e2e/test_openapi.py uses it in CI. By hand, every answer the whole
suite sees can be checked too (not part of CI):

    cd build
    rm -f /tmp/answers.jsonl
    TS_OPENAPI_RECORD=/tmp/answers.jsonl TASKSTREAMD=$PWD/taskstreamd TS_BUILD_DIR=$PWD \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider ../tests/e2e
    /usr/bin/python3 ../tests/e2e/openapi_check.py /tmp/answers.jsonl

With TS_OPENAPI_RECORD set, tshelpers.http() and SSEStream append each
request and answer as a JSON line, and each daemon of conftest.py a line
naming its two ports; answers from other ports (nginx, proxies) are not
checked. The last command prints the count of checked answers, each
mismatch, and exits 1 if there is one.

Needs python3-yaml and python3-jsonschema (Debian packages).
"""

import base64
import json
import os
import sys
import urllib.parse

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_PATH = os.path.join(HERE, "..", "..", "docs", "openapi.yaml")
#: What the router lets a "{param}" segment be (MAX_ID_LEN in src/http.c):
#: 1 to 64 bytes once %-decoded, no "/" (an encoded one is not a separator).
PARAM_MAX = 64
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _unescape(token):
    return token.replace("~1", "/").replace("~0", "~")


def _escape(token):
    return token.replace("~", "~0").replace("/", "~1")


def _media_type(value):
    return (value or "").split(";")[0].strip().lower()


def _norm_ctype(value):
    return ";".join(p.strip() for p in (value or "").lower().split(";"))


def _route_matches(segments, path):
    """Does `path` (raw, without the query) take the route split in `segments`,
    as src/http.c matches it?"""
    parts = path.split("/")
    if len(parts) != len(segments):
        return False
    for want, got in zip(segments, parts):
        value = urllib.parse.unquote_to_bytes(got)
        if want.startswith("{") and want.endswith("}"):
            if not 1 <= len(value) <= PARAM_MAX or b"/" in value:
                return False
        elif value != want.encode():
            return False
    return True


class Spec:
    def __init__(self, path=SPEC_PATH):
        with open(path) as f:
            self.doc = yaml.safe_load(f)
        self.routes = []  # (template, regex, listener, path item)
        for template, item in self.doc["paths"].items():
            listener = "admin" if any(":9090" in s["url"] for s in item.get("servers", [])) else "public"
            self.routes.append((template, template.split("/"), listener, item))
        self.unrouted = self.doc["x-taskstream-unrouted"]
        self.produced = set()
        self.checked = 0
        self.format_checker = jsonschema.FormatChecker()

    # -- the file --

    def resolve(self, obj, pointer):
        """(object, its JSON pointer) after following $ref (local ones)."""
        while isinstance(obj, dict) and "$ref" in obj and len(obj) == 1:
            ref = obj["$ref"]
            assert ref.startswith("#/"), ref
            pointer = ref[1:]
            obj = self.doc
            for token in ref[2:].split("/"):
                obj = obj[_unescape(token)]
        return obj, pointer

    def declared(self):
        """Every (METHOD, template, status) of the file; unrouted answers as
        ("*", "<case>", status)."""
        pairs = set()
        for template, _, _, item in self.routes:
            for m in METHODS:
                if m in item:
                    for status in item[m]["responses"]:
                        pairs.add((m.upper(), template, str(status)))
        for case, responses in self.unrouted.items():
            if case != "description":
                for status in responses:
                    pairs.add(("*", case, str(status)))
        return pairs

    def operation(self, method, path, listener=None):
        """(key, responses, response pointer prefix) for a request:
        key is (METHOD, template) or ("*", case)."""
        path = path.split("?", 1)[0].split("#", 1)[0]
        method = method.upper()
        op_method = "GET" if method == "HEAD" else method
        if path == "*" and method == "OPTIONS":
            return ("*", "asterisk"), self.unrouted["asterisk"], "/x-taskstream-unrouted/asterisk"
        if not path.startswith("/") or method == "CONNECT":
            return ("*", "unparsed"), self.unrouted["unparsed"], "/x-taskstream-unrouted/unparsed"
        for template, segments, route_listener, item in self.routes:
            if not _route_matches(segments, path) or (listener is not None and listener != route_listener):
                continue
            op = item.get(op_method.lower())
            if op is None:
                return ("*", "no-method"), self.unrouted["no-method"], "/x-taskstream-unrouted/no-method"
            return ((op_method, template), op["responses"],
                    f"/paths/{_escape(template)}/{op_method.lower()}/responses")
        return ("*", "no-route"), self.unrouted["no-route"], "/x-taskstream-unrouted/no-route"

    # -- answers --

    def _validate(self, instance, pointer, what, problems):
        root = dict(self.doc)
        root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        root["$ref"] = "#" + pointer
        v = jsonschema.Draft202012Validator(root, format_checker=self.format_checker)
        for err in sorted(v.iter_errors(instance), key=lambda e: list(e.path)):
            loc = "/".join(str(p) for p in err.path)
            problems.append(f"{what} at /{loc}: {err.message[:300]}")

    def _check_events(self, body, media, pointer, problems):
        sys.path.insert(0, HERE)
        from tshelpers import SSEEvent, SSEParser

        kinds = media.get("x-taskstream-events", {})
        if isinstance(body, list):  # events already parsed (SSEStream.events())
            items = body
        else:
            parser = SSEParser()
            data = body if isinstance(body, bytes) else body.encode()
            items = parser.feed(data) + parser.feed(b"\n\n")
        for item in items:
            if not isinstance(item, SSEEvent):
                continue
            spec = kinds.get(item.type)
            if spec is None:
                problems.append(f"event type {item.type!r} is not declared")
                continue
            if bool(spec.get("id")) != (item.id is not None):
                problems.append(f"event {item.type!r}: id {item.id!r}, declared "
                                f"{'with' if spec.get('id') else 'without'} one")
            try:
                data = json.loads(item.data)
            except ValueError:
                problems.append(f"event {item.type!r}: data is not JSON: {item.data[:200]!r}")
                continue
            self._validate(data, f"{pointer}/x-taskstream-events/{_escape(item.type)}/data",
                           f"event {item.type!r} data", problems)

    def check(self, method, path, status, headers, body, listener=None):
        """The problems of one answer (an empty list: it conforms).
        `headers`: a mapping or a list of (name, value); `body`: bytes (for
        an event stream also a list of tshelpers.SSEEvent), or None when it
        was not read."""
        self.checked += 1
        if hasattr(headers, "items"):
            headers = list(headers.items())
        hdrs = {}
        for k, v in headers:
            hdrs.setdefault(k.lower(), v)
        key, responses, prefix = self.operation(method, path, listener)
        status = str(status)
        where = f"{method} {path.split('?')[0][:80]} -> {'/'.join(key)} {status}"
        if status not in responses:
            return [f"{where}: status {status} is not declared (declared: "
                    f"{', '.join(sorted(map(str, responses)))})"]
        self.produced.add((*key, status))
        resp, pointer = self.resolve(responses[status], f"{prefix}/{status}")
        problems = []
        for name, h in resp.get("headers", {}).items():
            h, hpointer = self.resolve(h, f"{pointer}/headers/{_escape(name)}")
            value = hdrs.get(name.lower())
            if value is None:
                if h.get("required"):
                    problems.append(f"required header {name} is missing")
                continue
            self._validate(value, f"{hpointer}/schema", f"header {name}: {value!r}", problems)
        content = resp.get("content")
        ctype = hdrs.get("content-type")
        is_head = method.upper() == "HEAD"
        if not content:
            if ctype is not None:
                problems.append(f"Content-Type {ctype!r} where no content is declared")
            if body:
                problems.append(f"a body of {len(body)} bytes where none is declared")
        else:
            media_key = None
            for k in content:
                if (_norm_ctype(k) == _norm_ctype(ctype)
                        or (";" not in k and _media_type(k) == _media_type(ctype))):
                    media_key = k
                    break
            if media_key is None:
                problems.append(f"Content-Type {ctype!r} is not declared ({', '.join(content)})")
            elif body is not None and not is_head:
                media = content[media_key]
                mpointer = f"{pointer}/content/{_escape(media_key)}"
                if _media_type(media_key) == "application/json":
                    try:
                        doc = json.loads(body)
                    except ValueError:
                        problems.append(f"the body is not JSON: {body[:200]!r}")
                    else:
                        self._validate(doc, f"{mpointer}/schema", "body", problems)
                elif _media_type(media_key) == "text/event-stream":
                    self._check_events(body, media, mpointer, problems)
        return [f"{where}: {p}" for p in problems]


# --------------------------------------------------------------------------
# Checking a recording (TS_OPENAPI_RECORD) by hand
# --------------------------------------------------------------------------


def check_recording(path, spec=None):
    """(number checked, problems, number skipped) for a TS_OPENAPI_RECORD
    file. Lines are taken in order: a daemon's "listeners" line names its
    ports for the answers after it (an ephemeral port is reused later)."""
    spec = spec or Spec()
    listeners = {}
    problems, skipped = [], 0
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "listeners" in rec:
                listeners.update({int(k): v for k, v in rec["listeners"].items()})
                continue
            listener = listeners.get(rec.get("port"))
            if listener is None:
                skipped += 1
                continue
            body = base64.b64decode(rec["body"]) if rec.get("body") is not None else None
            for p in spec.check(rec["method"], rec["path"], rec["status"], rec["headers"], body,
                                listener):
                problems.append(f"{p}  [{rec.get('test', '?')}]")
    return spec.checked, problems, skipped


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} <TS_OPENAPI_RECORD file>", file=sys.stderr)
        return 2
    checked, problems, skipped = check_recording(argv[1])
    distinct = sorted(set(p.split("  [")[0] for p in problems))
    for p in distinct:
        print(p)
    print(f"{checked} answers checked, {len(problems)} mismatches ({len(distinct)} distinct), "
          f"{skipped} answers from other ports skipped")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
