#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into this directory (seeds/<target>/).

Run from anywhere: `python3 fuzz/seeds/make.py`. Needs the `cryptography` package for the
signed tokens and the key files; the seeds are committed, so this is only needed to change them.
"""
import base64
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = os.path.dirname(os.path.abspath(__file__))
NOW = 1_800_000_000


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data).encode()
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def jws(seed_byte, header, payload):
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return signing_input + "." + b64(key.sign(signing_input.encode()))


# ids
for i, s in enumerate(["google-calendar", "crm.v2", "user:alice", "tenant:acme", "user:okta:00u1abc", "user:auth0|abc123",
                       "https://www.googleapis.com/auth/calendar.readonly openid email", "b a  a", "SK-LIVE-0123"]):
    write("ids", f"seed-{i}", s)

# connection_spec (bodies and patches)
specs = [
    {"id": "internal-reporting", "kind": "api_key", "api_key": {"header": "X-API-Key", "format": "Bearer {key}"}, "display_name": "Reports"},
    {"id": "crm", "kind": "oauth2", "oauth2": {
        "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token",
        "revocation_endpoint": "https://crm.example/revoke", "client_id": "abc", "client_secret": "shh", "scopes": ["crm:read", "crm:write"],
        "token_endpoint_auth_method": "client_secret_post", "pkce": False, "extra_authorize_params": {"prompt": "consent"},
        "return_to_allowlist": ["https://app.example/done"], "issuer": "https://crm.example", "jwks_uri": "https://crm.example/jwks",
        "scope_enforcement": "label", "owner_proof": False},
     "scope_roles": {"crm:write": ["sales-admin"]}},
    {"id": "g", "kind": "oauth2", "provider": "microsoft", "oauth2": {"client_id": "c", "tenant": "contoso.onmicrosoft.com"}},
    {"id": "d", "kind": "oauth2", "oauth2": {"client_id": "c", "discovery_url": "http://localhost:8080/.well-known/openid-configuration"}},
    {"display_name": "Key", "api_key": {"format": "Token {key}"}},
    {"oauth2": {"client_secret": "new", "scopes": None}, "scope_roles": {"crm:read": ["r"]}},
]
for i, s in enumerate(specs):
    write("connection_spec", f"seed-{i}", s)

# credential_body
for i, s in enumerate([
    {"api_key": "sk-live-0123456789"},
    {"access_token": "ya29.a0", "refresh_token": "1//0g", "expires_in": 3599, "scope": "openid email", "token_type": "Bearer"},
    {"access_token": "00D", "expires_at": NOW + 3600, "instance_url": "https://na1.salesforce.com"},
]):
    write("credential_body", f"seed-{i}", s)

# policy (policies and agent bodies)
policy = {"grants": [
    {"connection": "google-calendar", "scopes": ["https://www.googleapis.com/auth/calendar.readonly"], "owners": "self", "max_ttl": 900,
     "connect": True},
    {"connection": "crm", "owners": "tenant", "connect": True, "connect_role": "admin"},
    {"connection": "internal-reporting", "owners": "any"},
]}
write("policy", "seed-0", policy)
write("policy", "seed-1", {"id": "support-bot", "name": "Support bot", "policy": policy})
write("policy", "seed-2", {"grants": []})

# agent_token: mode byte, then a token (even) or a payload to sign (odd)
claims = {"iss": "http://vault.test", "aud": "http://vault.test", "sub": "alice", "client_id": "agent-1", "iat": NOW - 60,
          "nbf": NOW - 60, "exp": NOW + 600, "jti": "j1", "act": {"sub": "agent-1"}, "tenant": "acme", "roles": ["r"], "epoch": 3}
write("agent_token", "seed-0", b"\x00" + jws(7, {"alg": "EdDSA", "typ": "JWT", "kid": "k1"}, claims).encode())
write("agent_token", "seed-1", b"\x01" + json.dumps(claims).encode())
write("agent_token", "seed-2", b"\x01" + b'{"alg":"EdDSA","kid":"k1"}' + b"\xff" + json.dumps(claims).encode())
write("agent_token", "seed-3", b"\x00" + jws(7, {"alg": "HS256", "kid": "k1"}, claims).encode())
# Extreme times: they overflowed the leeway arithmetic (see auth::tokens tests).
write("agent_token", "seed-4", b"\x01" + json.dumps(dict(claims, exp=2**63 - 1, nbf=-2**63)).encode())

# subject_token: the same modes, the issuer's Ed25519 key has seed 9 and kid s1
sub_claims = {"iss": "https://issuer.example", "aud": "latchkey", "sub": "alice", "exp": NOW + 600, "nbf": NOW - 5,
              "tid": "acme", "roles": ["admin", "dev"], "nonce": "n-0123"}
write("subject_token", "seed-0", b"\x00" + jws(9, {"alg": "EdDSA", "typ": "JWT", "kid": "s1"}, sub_claims).encode())
write("subject_token", "seed-1", b"\x01" + json.dumps(sub_claims).encode())
write("subject_token", "seed-2", b"\x01" + b'{"alg":"EdDSA"}' + b"\xff" + json.dumps(dict(sub_claims, roles="a b")).encode())
write("subject_token", "seed-3", b"\x00" + jws(9, {"alg": "RS256", "kid": "r1"}, sub_claims).encode())
# Extreme times: they overflowed the leeway arithmetic (see auth::subject tests).
write("subject_token", "seed-4", b"\x01" + json.dumps(dict(sub_claims, exp=2**63 - 1)).encode())
write("subject_token", "seed-5", b"\x01" + json.dumps(dict(sub_claims, nbf=-2**63)).encode())

# jwks
ed_x = b64(Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32).public_key().public_bytes_raw())
keys = [
    {"kty": "OKP", "crv": "Ed25519", "kid": "s1", "alg": "EdDSA", "x": ed_x},
    {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "e": "AQAB", "n": "ve0iguspoxLojbLeanBrSuu5jqrO0QqcavlywRPM3lQfZrDfl9RbJFIuLf7b2r7XdMN_6l6M3DBMaii-X_I_q5LIIBea3j7UEPy91XTtoJT6uk5xjswMfGIZCll7Mj2WDNKHKW7Lemm1-t7twh9NWKQXjJhPlcdJGw-56alNqu9MXmlxf_vFhhTzV7odcAVV_E8A1x9wzrZehGacChFSUmTAjBHFI0HEyv9_IBgvAO_fnmOkhksO6XaajBHW8ZAZJMNv90w1TVyVJoMAjp59cokVX_x5cYBHChON7Hsgx6agNk_wZBvP8wSKRGN13-cm-YHJRKsne-nqEckSiFqpDQ"},
    {"kty": "EC", "crv": "P-256", "kid": "e1", "x": "uwmj7vn8RxSXe_ojJc8Mt28TNyR2kGQhqYAhbZ8H_zc", "y": "h5Km9p7xil-eFYY6RlcCZh2CJh-e9pslhasUp8YT1Cw"},
]
write("jwks", "seed-0", {"keys": keys})
write("jwks", "seed-1", {"keys": [keys[0]]})
write("jwks", "seed-2", {"keys": [{"kty": "oct", "kid": "s1", "k": "c2VjcmV0"}, dict(keys[1], kid="s1")]})

# issuer_body
write("issuer_body", "seed-0", {"issuer": "https://login.example", "subject_prefix": "okta", "display_name": "Okta", "jwks": {"keys": keys},
                                 "audience": "latchkey", "tenant_claim": "tid", "roles_claim": "roles",
                                 "owner_proof": {"client_id": "latchkey-proof", "client_secret": "s3cret"}})
write("issuer_body", "seed-1", {"issuer": "http://localhost:9000", "subject_prefix": "dev", "jwks_uri": "http://localhost:9000/jwks",
                                 "audience": "a"})

# keyfile: LKMK | format | version | kdf | m | t | p | salt | nonce | AES-256-GCM(key)
def keyfile(version, kdf, params, passphrase):
    salt, nonce = bytes(range(16)), bytes(range(12))
    header = b"LKMK" + bytes([1]) + struct.pack(">I", version) + bytes([kdf]) + struct.pack(">III", *params) + salt + nonce
    if kdf == 0:
        kek = hashlib.sha256(b"latchkey/unprotected-kek/v1" + salt).digest()
    else:
        from argon2.low_level import Type, hash_secret_raw  # argon2-cffi, if installed
        kek = hash_secret_raw(passphrase, salt, time_cost=params[1], memory_cost=params[0], parallelism=params[2], hash_len=32,
                              type=Type.ID, version=19)
    return header + AESGCM(kek).encrypt(nonce, bytes([0x42]) * 32, header)


write("keyfile", "seed-0", keyfile(1, 0, (0, 0, 0), None))
write("keyfile", "seed-1", keyfile(7, 0, (0, 0, 0), None) + b"ignored passphrase")
try:
    write("keyfile", "seed-2", keyfile(3, 1, (64, 1, 1), b"pw") + b"pw")
except ImportError:
    pass

# provider_token: status (2 bytes), provider (1 byte: 0 custom, else catalog index + 1), body
def token_answer(name, status, provider, body):
    write("provider_token", name, struct.pack(">H", status) + bytes([provider]) + json.dumps(body).encode())


token_answer("seed-0", 200, 0, {"access_token": "ya29", "refresh_token": "1//r", "expires_in": "3600", "scope": "a b", "token_type": "bearer",
                                "id_token": "eyJ.x.y", "instance_url": "https://na1.example"})
token_answer("seed-1", 200, 0, {"ok": True, "authed_user": {"access_token": "xoxp", "token_type": "user", "expires_in": 43200}})
token_answer("seed-2", 200, 0, {"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."})
token_answer("seed-3", 400, 0, {"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"})
token_answer("seed-4", 400, 0, {"reason": "Invalid Token!", "error": "invalid_request"})
token_answer("seed-5", 400, 0, {"error": "invalid_scope"})

# discovery: expected issuer 0xFF body
write("discovery", "seed-0", b"https://accounts.example\xff" + json.dumps({
    "issuer": "https://accounts.example/", "authorization_endpoint": "https://accounts.example/auth",
    "token_endpoint": "https://accounts.example/token", "revocation_endpoint": "https://accounts.example/revoke",
    "jwks_uri": "https://accounts.example/jwks", "authorization_response_iss_parameter_supported": True}).encode())
write("discovery", "seed-1", json.dumps({"issuer": "https://issuer.example", "authorization_endpoint": "a", "token_endpoint": "t"}))
