"""A forest-wide duplicate-SPN scan in a process of its own: ``python -m exporter.scan_worker``.

Decoding a paged search of tens of thousands of accounts is seconds of pure Python; in a thread
of the exporter it would hold the interpreter lock against the event loop and slow every
scrape meanwhile. Here it costs the exporter nothing, and its memory goes back when it exits.

The request (target, credentials, base) arrives as JSON on standard input, never in argv or
the environment where other users could read it; the result or the error leaves as JSON on
standard output.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pydantic import SecretStr

from .checks.spn import default_naming_context, find_duplicates
from .ldap import LdapClient, LdapError, LdapTarget

__all__ = ["run"]


def run(request: dict[str, Any]) -> dict[str, Any]:
    password = request.get("password")
    target = LdapTarget(**request["target"], password=SecretStr(password) if password else None)
    client = LdapClient(target)
    try:
        base = request["base"]
        if base is None:
            base = default_naming_context(client, time.monotonic() + target.timeout)
        objects, values, owners = find_duplicates(
            client.paged(base, "(servicePrincipalName=*)", ["servicePrincipalName"])
        )
    except LdapError as exc:
        return {"error": {"reason": exc.reason, "detail": exc.detail}}
    finally:
        client.close()
    return {
        "objects": objects,
        "values": values,
        "owners": {k: [spn, list(dns)] for k, (spn, dns) in owners.items()},
    }


def main() -> int:
    json.dump(run(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
