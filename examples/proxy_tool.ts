// A tool an AI agent calls that uses Google Calendar through latchkey's proxy: the user's
// OAuth token is injected by latchkey and never reaches the tool (or the model).
//
//   LATCHKEY_URL=http://127.0.0.1:8200 CLIENT_ID=reporting-tool CLIENT_SECRET=lks_... \
//     node --experimental-strip-types proxy_tool.ts alice     # Node 22.6 or newer; or compile it with tsc
//
// The grant for `google-calendar` lists "modes": ["proxy"] (or ["release", "proxy"]); the
// catalog gives Google connections their API root (https://www.googleapis.com) as base URL.

const LATCHKEY = process.env.LATCHKEY_URL ?? "http://127.0.0.1:8200";

async function agentToken(): Promise<string> {
  const basic = Buffer.from(`${process.env.CLIENT_ID}:${process.env.CLIENT_SECRET}`).toString("base64");
  const r = await fetch(`${LATCHKEY}/oauth2/token`, {
    method: "POST",
    headers: { Authorization: `Basic ${basic}`, "Content-Type": "application/x-www-form-urlencoded" },
    body: "grant_type=client_credentials",
  });
  if (!r.ok) throw new Error(`token endpoint answered ${r.status}`);
  return (await r.json()).access_token; // valid at most 15 minutes: cache it until then
}

// latchkey's own refusals carry {error, error_description, request_id}; anything else is the API's.
async function viaProxy(token: string, connection: string, pathAndQuery: string, user: string, init: RequestInit = {}) {
  const r = await fetch(`${LATCHKEY}/v1/proxy/${connection}/${pathAndQuery}`, {
    ...init,
    redirect: "manual",
    headers: { ...(init.headers ?? {}), Authorization: `Bearer ${token}`, "X-Latchkey-User": user },
  });
  if (r.status === 403 || r.status === 404 || r.status >= 500) {
    const body = await r.clone().json().catch(() => null);
    if (body?.request_id && body?.error_description) {
      throw new Error(`latchkey refused: ${body.error}: ${body.error_description} (request ${body.request_id})`);
    }
  }
  return r;
}

async function main(user: string) {
  const token = await agentToken();
  const r = await viaProxy(token, "google-calendar", "calendar/v3/calendars/primary/events?maxResults=5&orderBy=startTime&singleEvents=true", user);
  console.log(r.status);
  const events = await r.json();
  for (const e of events.items ?? []) console.log(e.start?.dateTime ?? e.start?.date, e.summary);
}

main(process.argv[2] ?? "alice").catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
