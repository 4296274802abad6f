"""The report of the client scripts in this folder: each check runs, failing ones are reported
(not just the first), then `N passed, M failed` and the exit status the Rust tests read."""

import sys


def run_checks(checks):
    """`checks`: (name, function) pairs. Exits 0 when every one passed, else 1."""
    failed = 0
    for name, fn in checks:
        try:
            fn()
            print(f"ok    {name}")
        except Exception as e:  # noqa: BLE001 - report every failing check
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e!r}")
    print(f"{len(checks) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
