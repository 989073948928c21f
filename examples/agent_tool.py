"""A tool an AI agent calls: fetch a user's token from latchkey at call time, use it, forget it.

    pip install requests
    LATCHKEY_URL=http://127.0.0.1:8200 CLIENT_ID=reporter CLIENT_SECRET=lks_... python3 agent_tool.py acme

The agent authenticates with its client credentials, gets a short-lived agent token, and asks
for the tenant's API key for the `internal-reporting` connection. latchkey answers only if the
agent's policy allows that connection for that owner; every decision is audited.
"""
import os
import sys

import requests

LATCHKEY = os.environ.get("LATCHKEY_URL", "http://127.0.0.1:8200")


def agent_token() -> str:
    # client_credentials with HTTP Basic (client_secret_basic). A tool acting for a signed-in
    # user would instead send grant_type=urn:ietf:params:oauth:grant-type:token-exchange with
    # the user's ID token as subject_token, and get a token bound to that user.
    r = requests.post(
        f"{LATCHKEY}/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"]),
        timeout=5,
    )
    r.raise_for_status()
    return r.json()["access_token"]  # valid at most 15 minutes: cache it until then


def release(token: str, connection: str, **params) -> dict:
    r = requests.get(
        f"{LATCHKEY}/v1/connections/{connection}/token",
        params=params,  # scope="a b", min_ttl=300, user_id=..., tenant_id=...
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    if r.status_code != 200:
        err = r.json()
        # access_denied / insufficient_scope (403), not_connected (404), reauth_required (409),
        # provider_unavailable (503, honour Retry-After), audit_unavailable (503)
        raise RuntimeError(f"latchkey refused: {err['error']}: {err['error_description']} (request {err['request_id']})")
    return r.json()


def main(tenant: str) -> None:
    token = agent_token()
    cred = release(token, "internal-reporting", tenant_id=tenant)
    # The release says how to present the key: header name and formatted value.
    header = {cred["header"]["name"]: cred["header"]["value"]}
    print(f"lease {cred['lease']['id']} valid {cred['lease']['expires_in']} s; would call the API with header {list(header)}")
    # e.g. requests.get("https://reporting.internal/api/v1/summary", headers=header, timeout=10)
    # For an OAuth connection: headers={"Authorization": f"{cred['token_type']} {cred['access_token']}"}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "acme")
