//! The connect flow in the browser: a confirmation page (GET changes nothing), a POST that
//! binds the link to this browser and continues to owner proof or the provider, and the
//! two redirects back. Pages are small static HTML with no script and no external assets,
//! and may not be framed. Callback queries (code, state) are never logged: the request log
//! records the path only.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::middleware::bearer;
use super::{not_allowed, read_json, ApiError, AppState};
use crate::crypto::{ct_eq, hex, sha256};
use crate::model::oauth::random_token;
use crate::model::{ConnectionId, Owner};
use crate::service::connect::{Callback, CallbackOutcome, LinkError, LinkPage, NewConnectSession};

/// No script, no styles, no framing, no referrer.
const PAGE_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
const CSRF_COOKIE: &str = "lk_csrf_";
/// Binding and CSRF cookies live as long as a link.
const COOKIE_MAX_AGE: i64 = crate::vault::SESSION_TTL;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/connect/sessions").route(web::post().to(create_session)).default_service(not_allowed("POST")))
        .service(
            web::resource("/v1/connect/s/{session}")
                .route(web::get().to(confirm_page))
                .route(web::post().to(continue_link))
                .default_service(not_allowed("GET, POST")),
        )
        .service(web::resource("/v1/connect/proof").route(web::get().to(proof_callback)).default_service(not_allowed("GET")))
        .service(web::resource("/v1/connect/callback").route(web::get().to(callback)).default_service(not_allowed("GET")));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSessionBody {
    connection_id: ConnectionId,
    owner: Owner,
    return_to: Option<String>,
}

/// Admin token, or an agent token whose grant allows connect links for that owner.
/// The caller is authenticated before the body is read.
async fn create_session(req: HttpRequest, state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let token = bearer(req.headers()).ok_or_else(ApiError::unauthorized)?;
    let caller = state.services.connect_caller(token).await?;
    let body: NewSessionBody = read_json(&req, payload, state.max_body_bytes).await?;
    let new = NewConnectSession { connection: body.connection_id, owner: body.owner, return_to: body.return_to };
    let created = state.services.create_connect_session(caller, new).await?;
    Ok(HttpResponse::Created().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "connect_url": created.connect_url,
        "expires_at": crate::time::rfc3339(created.expires_at),
        "replaces_existing": created.replaces_existing,
        "owner_proof": created.owner_proof,
    })))
}

/// The confirmation page. Consumes nothing: link-preview bots and mail scanners may fetch it.
async fn confirm_page(state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let page = match state.services.link_page(&id).await {
        Ok(p) => p,
        Err(e) => return link_error(e),
    };
    let Ok(csrf) = random_token() else { return link_error(LinkError::ProviderUnreachable) };
    let cookie = cookie(&state, &csrf_cookie_name(&id), csrf.expose(), "Strict");
    HttpResponse::Ok()
        .insert_header((header::SET_COOKIE, cookie))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_CSP))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .content_type("text/html; charset=utf-8")
        .body(confirmation_html(&page, csrf.expose()))
}

#[derive(Deserialize)]
struct ContinueForm {
    csrf: String,
}

/// The page's button: binds the link to this browser, then on to proof or the provider.
async fn continue_link(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>, form: web::Form<ContinueForm>) -> HttpResponse {
    let expected = session_cookies(&state, &req).into_iter().find(|(n, _)| *n == csrf_cookie_name(&id)).map(|(_, v)| v);
    if !expected.is_some_and(|c| ct_eq(c.as_bytes(), form.csrf.as_bytes())) {
        return page(StatusCode::FORBIDDEN, "Request not accepted", "Open the link again and use its button to continue.");
    }
    match state.services.continue_link(&id).await {
        Ok(c) => HttpResponse::Found()
            .insert_header((header::SET_COOKIE, cookie(&state, &c.cookie_name, &c.cookie_value, "Lax")))
            .insert_header((header::LOCATION, c.redirect))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        Err(e) => link_error(e),
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

fn callback_input(state: &AppState, req: &HttpRequest, q: CallbackQuery) -> Callback {
    Callback { code: q.code, state: q.state, iss: q.iss, error: q.error, cookies: session_cookies(state, req) }
}

/// The trusted issuer's redirect back after owner proof.
async fn proof_callback(req: HttpRequest, state: web::Data<AppState>, q: web::Query<CallbackQuery>) -> HttpResponse {
    outcome_page(state.services.proof_callback(callback_input(&state, &req, q.into_inner())).await)
}

/// The provider's redirect back.
async fn callback(req: HttpRequest, state: web::Data<AppState>, q: web::Query<CallbackQuery>) -> HttpResponse {
    outcome_page(state.services.connect_callback(callback_input(&state, &req, q.into_inner())).await)
}

fn outcome_page(outcome: CallbackOutcome) -> HttpResponse {
    match outcome {
        CallbackOutcome::MissingState => page(StatusCode::BAD_REQUEST, "Invalid request", "The response is missing its state; nothing was stored."),
        CallbackOutcome::UnknownState => page(
            StatusCode::BAD_REQUEST,
            "Link not valid",
            "This response does not match an open connect session (forged, replayed or expired); nothing was stored.",
        ),
        CallbackOutcome::WrongBrowser => page(
            StatusCode::FORBIDDEN,
            "Wrong browser",
            "This response belongs to a connect link continued in another browser; nothing was stored. Finish in the browser where you pressed Continue.",
        ),
        CallbackOutcome::NotTheOwner => page(
            StatusCode::FORBIDDEN,
            "Not connected",
            "The account you signed in with is not the one this link is for; nothing was stored and the link can no longer be used.",
        ),
        CallbackOutcome::Continue(url) => {
            HttpResponse::Found().insert_header((header::LOCATION, url)).insert_header((header::CACHE_CONTROL, "no-store")).finish()
        }
        CallbackOutcome::Finished { return_to, result } => finish(return_to.as_deref(), result),
    }
}

/// The end of a flow: back to `return_to` with the outcome, or a small page.
fn finish(return_to: Option<&str>, outcome: Result<(), &str>) -> HttpResponse {
    match (return_to.and_then(|r| url::Url::parse(r).ok()), outcome) {
        (Some(mut url), outcome) => {
            match outcome {
                Ok(()) => url.query_pairs_mut().append_pair("status", "connected"),
                Err(code) => url.query_pairs_mut().append_pair("error", code),
            };
            HttpResponse::Found()
                .insert_header((header::LOCATION, url.to_string()))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
        (None, Ok(())) => page(StatusCode::OK, "Connected", "Your account is connected. You can close this window."),
        (None, Err("access_denied")) => page(StatusCode::OK, "Not connected", "You declined the request; nothing was stored."),
        (None, Err("owner_proof_failed")) => page(
            StatusCode::FORBIDDEN,
            "Not connected",
            "Signing in to confirm who you are did not succeed; nothing was stored and the link can no longer be used.",
        ),
        (None, Err(_)) => page(
            StatusCode::BAD_GATEWAY,
            "Not connected",
            "The provider did not complete the connection; nothing was stored. Try again with a new link.",
        ),
    }
}

fn link_error(e: LinkError) -> HttpResponse {
    match e {
        LinkError::Invalid => page(
            StatusCode::NOT_FOUND,
            "Link not valid",
            "This connect link is invalid, was already used, or has expired. Ask for a new one.",
        ),
        LinkError::ProviderUnreachable => {
            page(StatusCode::BAD_GATEWAY, "Provider not reachable", "The provider's configuration could not be loaded. Try again later.")
        }
    }
}

fn csrf_cookie_name(session_id: &str) -> String {
    format!("{CSRF_COOKIE}{}", &hex(&sha256(session_id.as_bytes()))[..16])
}

fn secure(state: &AppState) -> bool {
    state.services.tokens.public_url().starts_with("https://")
}

/// A session cookie: HttpOnly, `__Host-` and Secure when the vault is served over https.
fn cookie(state: &AppState, name: &str, value: &str, same_site: &str) -> String {
    if secure(state) {
        format!("__Host-{name}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; Secure; SameSite={same_site}")
    } else {
        format!("{name}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite={same_site}")
    }
}

/// The request's session cookies, by name. Over https only `__Host-` cookies count (the
/// prefix is stripped): a same-named cookie without it could have been planted by a
/// sibling domain.
fn session_cookies(state: &AppState, req: &HttpRequest) -> Vec<(String, String)> {
    let secure = secure(state);
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter_map(|(k, v)| match (secure, k.strip_prefix("__Host-")) {
            (true, Some(name)) => Some((name.to_owned(), v.to_owned())),
            (false, None) => Some((k.to_owned(), v.to_owned())),
            _ => None,
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn confirmation_html(p: &LinkPage, csrf: &str) -> String {
    let proof = match &p.proof_at {
        Some(at) => format!("<p>First you will sign in at {} to confirm that you are {}.</p>", esc(at), esc(&p.owner_label)),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Connect {service}</title></head><body><main><h1>Connect {service}</h1>\
         <p>{requester} asks to connect a {service} account. It will be stored in this vault and used on behalf of its owner.</p>\
         <dl><dt>Service</dt><dd>{service}</dd><dt>Stored for</dt><dd>{owner} <small>({owner_id})</small></dd><dt>Requested by</dt><dd>{requester}</dd></dl>\
         {proof}<p>Continue only if you are {owner} and you expected this request.</p>\
         <form method=\"post\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Continue to {service}</button></form>\
         </main></body></html>",
        service = esc(&p.service),
        requester = esc(&p.requester_label),
        owner = esc(&p.owner_label),
        owner_id = esc(&p.owner.to_string()),
        proof = proof,
        csrf = esc(csrf),
    )
}

fn page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><main><h1>{t}</h1><p>{m}</p></main></body></html>",
            t = esc(title),
            m = esc(message)
        ))
}
