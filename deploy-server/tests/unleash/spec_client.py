"""Runs Unleash client-specification cases through the official Python SDK (UnleashClient).

Reads a JSON list from stdin: [{"name", "url", "token", "features": N, "tests": [...],
"variantTests": [...]}], one entry per specification file, each with its own server. For
each entry it starts an UnleashClient against `url` (which fetches /client/features), waits
until it has loaded N features, evaluates every case with is_enabled / get_variant, and
prints one JSON object on stdout: {"files": [{"name", "loaded": [...], "tests": [...],
"variantTests": [...]}]}. Errors go to stderr and a non-zero exit.
"""

import json
import sys
import tempfile
import time

from UnleashClient import UnleashClient


def run_file(entry, cache_root):
    client = UnleashClient(
        url=entry["url"],
        app_name="deploykit-spec",
        instance_id="spec-" + entry["name"],
        custom_headers={"Authorization": entry["token"]},
        refresh_interval=1,
        metrics_interval=1,
        cache_directory=tempfile.mkdtemp(dir=cache_root),
        request_timeout=5,
    )
    client.initialize_client()
    try:
        deadline = time.monotonic() + 20
        while len(client.feature_definitions()) < entry["features"]:
            if time.monotonic() > deadline:
                raise SystemExit(
                    "%s: the SDK loaded %d of %d features"
                    % (entry["name"], len(client.feature_definitions()), entry["features"])
                )
            time.sleep(0.05)
        tests = [client.is_enabled(case["toggleName"], case.get("context") or {}) for case in entry["tests"]]
        variants = [client.get_variant(case["toggleName"], case.get("context") or {}) for case in entry["variantTests"]]
        # Let one metrics interval pass so the SDK reports its counts to the server.
        time.sleep(entry.get("linger", 0))
        return {
            "name": entry["name"],
            "loaded": sorted(client.feature_definitions().keys()),
            "tests": tests,
            "variantTests": variants,
        }
    finally:
        client.destroy()


def main():
    entries = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as cache_root:
        files = [run_file(entry, cache_root) for entry in entries]
    json.dump({"files": files}, sys.stdout)


if __name__ == "__main__":
    main()
