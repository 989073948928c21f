"""A tool an AI agent calls that uses an API through latchkey's proxy: it never holds the key.

    pip install requests
    LATCHKEY_URL=http://127.0.0.1:8200 CLIENT_ID=reporting-tool CLIENT_SECRET=lks_... \
        python3 proxy_tool.py acme reports/weekly

The agent's grant for `internal-reporting` lists `"modes": ["proxy"]`; the connection has a
`proxy.base_url`. latchkey decides the call like a release (policy, owner, audit), injects the
tenant's key and forwards the request; the API's answer comes back as it is, minus anything
that would carry the key.
"""
import os
import sys

import requests

LATCHKEY = os.environ.get("LATCHKEY_URL", "http://127.0.0.1:8200")


def agent_token() -> str:
    r = requests.post(
        f"{LATCHKEY}/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"]),
        timeout=5,
    )
    r.raise_for_status()
    return r.json()["access_token"]  # valid at most 15 minutes: cache it until then


def call(token: str, connection: str, path: str, *, tenant: str, method: str = "GET", **kwargs) -> requests.Response:
    # Path and query string go to the API untouched; latchkey's own inputs are headers.
    r = requests.request(
        method,
        f"{LATCHKEY}/v1/proxy/{connection}/{path}",
        headers={"Authorization": f"Bearer {token}", "X-Latchkey-Tenant": tenant},
        allow_redirects=False,  # redirects are the API's; latchkey does not follow them either
        timeout=35,
        **kwargs,  # params=..., json=..., data=...
    )
    # latchkey's own refusals carry {error, error_description, request_id}: access_denied or
    # path_not_allowed (403), not_connected (404), method_not_allowed (405), proxy_not_configured
    # (409), payload_too_large (413), egress_denied or upstream_unavailable (502),
    # upstream_timeout (504). Any other answer is the API's own.
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        err = r.json()
        if isinstance(err, dict) and {"error", "error_description", "request_id"} <= err.keys():
            raise RuntimeError(f"latchkey refused: {err['error']}: {err['error_description']} (request {err['request_id']})")
    return r


def main(tenant: str, path: str) -> None:
    token = agent_token()
    r = call(token, "internal-reporting", path, tenant=tenant, params={"format": "csv"})
    print(r.status_code)
    print(r.text[:2000])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "acme", sys.argv[2] if len(sys.argv) > 2 else "reports/weekly")
