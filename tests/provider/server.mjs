// Test OAuth 2.0 / OpenID Connect provider for the Rust integration tests.
//
// Built on panva's oidc-provider (9.x). See README.md for the contract.
//
// stdout carries exactly one line, `LISTENING http://127.0.0.1:<port>`;
// everything else (including oidc-provider's own notices, which it would
// otherwise print with console.info) goes to stderr.

import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';

// Route every console method to stderr *before* loading oidc-provider, so
// that nothing but the LISTENING line can ever reach stdout.
for (const method of ['log', 'info', 'debug', 'warn', 'error', 'trace']) {
  console[method] = (...args) => {
    process.stderr.write(`${args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ')}\n`);
  };
}

const { default: Provider } = await import('oidc-provider');

function log(...args) {
  process.stderr.write(`[test-provider] ${args.join(' ')}\n`);
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

const PORT = Number.parseInt(process.env.PORT ?? '0', 10);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) {
  log(`invalid PORT: ${process.env.PORT}`);
  process.exit(2);
}

const ACCESS_TTL = Number.parseInt(process.env.ACCESS_TTL ?? '30', 10);
if (!Number.isInteger(ACCESS_TTL) || ACCESS_TTL <= 0) {
  log(`invalid ACCESS_TTL: ${process.env.ACCESS_TTL}`);
  process.exit(2);
}

// Extra claims per account, e.g. {"alice": {"org": "acme", "roles": ["admin"]}}: they go
// into ID tokens (a trusted issuer's tenant and roles claims).
let accountClaims = {};
if (process.env.ACCOUNT_CLAIMS) {
  try {
    accountClaims = JSON.parse(process.env.ACCOUNT_CLAIMS);
  } catch (err) {
    log(`invalid ACCOUNT_CLAIMS: ${err.message}`);
    process.exit(2);
  }
}

const DEFAULT_CLIENTS = [
  {
    client_id: 'latchkey',
    client_secret: 'latchkey-secret',
    redirect_uris: ['http://127.0.0.1:1/v1/connect/callback'],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
];

let clients = DEFAULT_CLIENTS;
if (process.env.CLIENTS) {
  try {
    clients = JSON.parse(process.env.CLIENTS);
    if (!Array.isArray(clients)) throw new TypeError('CLIENTS must be a JSON array');
  } catch (err) {
    log(`invalid CLIENTS: ${err.message}`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------
// Test bookkeeping
// ---------------------------------------------------------------------------

const stats = {
  refresh: 0,
  refresh_failed: 0,
  code: 0,
  code_failed: 0,
  revocations: 0,
  grants_revoked: 0,
};

function resetStats() {
  for (const key of Object.keys(stats)) stats[key] = 0;
}

// accountId -> Set<grantId> / Set<session id>
const grantsByAccount = new Map();
const sessionsByAccount = new Map();

function track(map, accountId, id) {
  if (!accountId || !id) return;
  if (!map.has(accountId)) map.set(accountId, new Set());
  map.get(accountId).add(id);
}

// ---------------------------------------------------------------------------
// HTTP server first (so we know the port), then the Provider.
// ---------------------------------------------------------------------------

let handler = (req, res) => {
  res.statusCode = 503;
  res.end();
};

const server = http.createServer((req, res) => handler(req, res));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', () => {
    server.off('error', reject);
    resolve();
  });
});

const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', use: 'sig', alg: 'RS256' };

const SCOPES = ['openid', 'offline_access', 'profile', 'email', 'crm:read', 'crm:write'];

const configuration = {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: ['latchkey-test-provider-cookie-key'] },
  scopes: SCOPES,
  claims: {
    openid: ['sub', 'org', 'roles'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  conformIdTokenClaims: false,
  clockTolerance: 0,
  pkce: {
    required: () => true,
    methods: ['S256'],
  },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Refresh tokens must outlive the browser session of the test "user".
  expiresWithSession: async () => false,
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    introspection: { enabled: true, allowedPolicy: async () => true },
  },
  ttl: {
    AccessToken: () => ACCESS_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 60 * 60,
    Interaction: 3600,
    Session: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
    ClientCredentials: 600,
    DeviceCode: 600,
    BackchannelAuthenticationRequest: 600,
    PreAuthorizedCode: 600,
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email: `${sub}@example.com`, email_verified: true, ...(accountClaims[sub] ?? {}) }),
  }),
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const provider = new Provider(issuer, configuration);

// -- counters ---------------------------------------------------------------

provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc?.params?.grant_type;
  if (gt === 'refresh_token') stats.refresh += 1;
  else if (gt === 'authorization_code') stats.code += 1;
});

provider.on('grant.error', (ctx, err) => {
  const gt = ctx.oidc?.params?.grant_type;
  if (gt === 'refresh_token') stats.refresh_failed += 1;
  else if (gt === 'authorization_code') stats.code_failed += 1;
  log(`token endpoint error grant_type=${gt} error=${err.error} detail=${err.error_detail ?? err.error_description ?? ''}`);
});

provider.on('grant.revoked', (ctx, grantId) => {
  stats.grants_revoked += 1;
  log(`grant revoked ${grantId}`);
});

provider.on('grant.saved', (grant) => track(grantsByAccount, grant.accountId, grant.jti));
provider.on('session.saved', (session) => track(sessionsByAccount, session.accountId, session.jti));

provider.on('server_error', (ctx, err) => log(`server_error: ${err?.stack ?? err}`));
provider.on('authorization.error', (ctx, err) => log(`authorization error: ${err.error} ${err.error_description ?? ''} ${err.error_detail ?? ''}`));

provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'revocation' && ctx.status === 200) stats.revocations += 1;
});

// -- interaction + test endpoints --------------------------------------------

function sendJson(res, status, body) {
  const payload = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(payload));
  res.end(payload);
}

async function handleInteraction(req, res) {
  const interaction = await provider.interactionDetails(req, res);
  const { uid, params, prompt } = interaction;
  const accountId = params.login_hint || 'alice';
  log(`interaction ${uid} prompt=${prompt.name} client=${params.client_id} account=${accountId} scope=${params.scope ?? ''}`);

  if (accountId === 'deny') {
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'user refused' },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  let grant;
  if (interaction.grantId) {
    grant = await provider.Grant.find(interaction.grantId);
  }
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  const details = prompt.details ?? {};
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  track(grantsByAccount, accountId, grantId);

  await provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

async function forgetAccount(accountId) {
  const grantIds = [...(grantsByAccount.get(accountId) ?? [])];
  for (const grantId of grantIds) {
    await Promise.all([
      provider.AccessToken.revokeByGrantId(grantId),
      provider.RefreshToken.revokeByGrantId(grantId),
      provider.AuthorizationCode.revokeByGrantId(grantId),
    ]);
    const grant = await provider.Grant.find(grantId);
    if (grant) await grant.destroy();
  }
  grantsByAccount.delete(accountId);

  const sessionIds = [...(sessionsByAccount.get(accountId) ?? [])];
  for (const id of sessionIds) {
    await provider.Session.adapter.destroy(id);
  }
  sessionsByAccount.delete(accountId);
  log(`forgot account ${accountId}: ${grantIds.length} grant(s), ${sessionIds.length} session(s)`);
  return { grants: grantIds.length, sessions: sessionIds.length };
}

const providerCallback = provider.callback();

handler = async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const { pathname } = url;

    if (req.method === 'GET' && /^\/interaction\/[^/]+$/.test(pathname)) {
      await handleInteraction(req, res);
      return;
    }
    if (req.method === 'GET' && pathname === '/_test/stats') {
      sendJson(res, 200, stats);
      return;
    }
    if (req.method === 'POST' && pathname === '/_test/reset') {
      resetStats();
      sendJson(res, 200, stats);
      return;
    }
    // An API that stops honouring one access token before it expires (RFC 7009 revocation
    // here would revoke the whole grant, refresh token included).
    const drop = /^\/_test\/drop-access-token\/([^/]+)$/.exec(pathname);
    if (req.method === 'POST' && drop) {
      const token = await provider.AccessToken.find(decodeURIComponent(drop[1]));
      if (token) await token.destroy();
      sendJson(res, 200, { dropped: Boolean(token) });
      return;
    }
    const forget = /^\/_test\/forget\/([^/]+)$/.exec(pathname);
    if (req.method === 'POST' && forget) {
      const result = await forgetAccount(decodeURIComponent(forget[1]));
      sendJson(res, 200, { forgotten: decodeURIComponent(forget[1]), ...result });
      return;
    }

    providerCallback(req, res);
  } catch (err) {
    log(`handler error on ${req.method} ${req.url}: ${err?.stack ?? err}`);
    if (!res.headersSent) {
      sendJson(res, err?.statusCode ?? 500, {
        error: err?.error ?? 'server_error',
        error_description: err?.error_description ?? String(err?.message ?? err),
      });
    } else {
      res.end();
    }
  }
};

// ---------------------------------------------------------------------------
// Ready + shutdown
// ---------------------------------------------------------------------------

process.stdout.write(`LISTENING ${issuer}\n`);
log(`issuer ${issuer}, clients: ${clients.map((c) => c.client_id).join(', ')}, access token ttl ${ACCESS_TTL}s`);

let shuttingDown = false;
function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  log(`${signal} received, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
