"""Measures how long a flag change takes to reach the official Python SDK.

Arguments: URL TOKEN FLAG MODE (MODE: polling, with a 1 s refresh interval, or streaming).
Prints "ready <true|false>" once the SDK has loaded FLAG, then waits for a line on stdin
(sent right after the server changed the flag), then prints "seen <milliseconds>" when
is_enabled(FLAG) has flipped, or "timeout" after 15 s.
"""

import sys
import tempfile
import time

from UnleashClient import UnleashClient


def main():
    url, token, flag, mode = sys.argv[1:5]
    client = UnleashClient(
        url=url,
        app_name="deploykit-watch",
        custom_headers={"Authorization": token},
        refresh_interval=1,
        disable_metrics=True,
        cache_directory=tempfile.mkdtemp(),
        experimental_mode={"type": mode},
    )
    client.initialize_client()
    try:
        deadline = time.monotonic() + 20
        while flag not in client.feature_definitions():
            if time.monotonic() > deadline:
                raise SystemExit("the SDK never loaded " + flag)
            time.sleep(0.01)
        before = client.is_enabled(flag, {})
        print("ready", "true" if before else "false", flush=True)
        sys.stdin.readline()
        start = time.monotonic()
        while client.is_enabled(flag, {}) == before:
            if time.monotonic() - start > 15:
                print("timeout", flush=True)
                return
            time.sleep(0.005)
        print("seen", round((time.monotonic() - start) * 1000), flush=True)
    finally:
        client.destroy()


if __name__ == "__main__":
    main()
