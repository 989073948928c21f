"""Seeds a fresh `latchkey serve --dev` for the schemathesis run and writes what the run needs.

Usage: seed.py BASE_URL ADMIN_TOKEN OUT_DIR

Creates an OAuth connection and an API-key connection, a credential for `user:alice` on
each, an agent allowed both (its client-credentials token is what the agent routes use),
and a trusted issuer with an owner-proof client. The ids are the document's examples. Every secret is random and written to
OUT_DIR/secrets.json, which the `no_secret_leak` check (hooks.py) reads:
- `never`: may appear in no response at all;
- `release_only`: may appear only in a 200 from the release route.
The environment for schemathesis goes to OUT_DIR/env (`KEY=value` lines).
"""

import base64
import json
import os
import secrets
import sys

import requests


def main() -> None:
    base, admin, out = sys.argv[1], sys.argv[2], sys.argv[3]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {admin}"

    def call(method: str, path: str, body: dict, status: int) -> dict:
        r = s.request(method, base + path, json=body, timeout=30)
        if r.status_code != status:
            sys.exit(f"seed: {method} {path} answered {r.status_code}: {r.text}")
        return r.json() if r.content else {}

    token = lambda: "sk-" + secrets.token_urlsafe(24)
    client_secret, access, refresh, api_key, proof_secret = token(), token(), token(), token(), token()
    call("POST", "/v1/admin/connections", {
        "id": "crm", "kind": "oauth2", "display_name": "CRM",
        # Loopback endpoints nothing listens on; the credential below has no expiry, so nothing
        # ever refreshes it (the run has no network anyway: run.sh starts it in its own namespace).
        "oauth2": {"authorization_endpoint": "http://127.0.0.1:9/authorize", "token_endpoint": "http://127.0.0.1:9/token",
                   "client_id": "latchkey-test", "client_secret": client_secret, "scopes": ["crm:read", "crm:write"],
                   "return_to_allowlist": ["https://app.example.com/"], "scope_enforcement": "strict"},
    }, 201)
    # Proxied to a loopback port where nothing listens (the run has no network): proxy calls the
    # policy allows end in 502 `upstream_unavailable`, after the whole decision and audit path.
    call("POST", "/v1/admin/connections", {"id": "internal-reporting", "kind": "api_key", "api_key": {"header": "X-API-Key"},
                                           "proxy": {"base_url": "http://127.0.0.1:9/api", "allow_private": True, "timeout": 2}}, 201)
    call("PUT", "/v1/admin/connections/crm/credentials/user:alice", {"access_token": access, "refresh_token": refresh, "scope": "crm:read crm:write"}, 200)
    call("PUT", "/v1/admin/connections/internal-reporting/credentials/user:alice", {"api_key": api_key}, 200)
    grants = [{"connection": "crm", "owners": "any", "connect": True}, {"connection": "internal-reporting", "owners": "any", "modes": ["release", "proxy"]}]
    # `support-bot` is the document's example agent, which the run may rotate, disable or
    # delete; the agent routes are called with a token of `fuzz-agent`, which no example names.
    call("POST", "/v1/admin/agents", {"id": "support-bot", "name": "Support bot", "policy": {"grants": grants}}, 201)
    agent = call("POST", "/v1/admin/agents", {"id": "fuzz-agent", "name": "Fuzz agent", "policy": {"grants": grants}}, 201)
    agent_secret = agent["client_secret"]
    x = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    call("POST", "/v1/admin/issuers", {
        "issuer": "https://idp.example.com", "subject_prefix": "acme", "display_name": "Acme SSO", "audience": "latchkey",
        "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]},
        "owner_proof": {"client_id": "latchkey", "client_secret": proof_secret},
    }, 201)
    r = requests.post(base + "/oauth2/token", auth=("fuzz-agent", agent_secret), data={"grant_type": "client_credentials"}, timeout=30)
    if r.status_code != 200:
        sys.exit(f"seed: token request answered {r.status_code}: {r.text}")
    agent_token = r.json()["access_token"]

    with open(os.path.join(out, "secrets.json"), "w") as f:
        json.dump({"never": [admin, agent_secret, agent_token, client_secret, refresh, proof_secret], "release_only": [access, api_key]}, f)
    with open(os.path.join(out, "env"), "w") as f:
        f.write(f"LK_AGENT_ID=fuzz-agent\nLK_AGENT_SECRET={agent_secret}\nLK_AGENT_TOKEN={agent_token}\n")


if __name__ == "__main__":
    main()
