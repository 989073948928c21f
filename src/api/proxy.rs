//! `ANY /v1/proxy/{connection}/{path…}`: the wire side of proxy mode. The request is taken
//! apart into the service's types (owner and scopes from `X-Latchkey-*` headers only, the
//! query string left to the upstream, the body streamed through a bounded channel) and the
//! upstream's answer streamed back. The decisions live in `service::proxy`.

use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};

use super::middleware::bearer;
use super::{ApiError, AppState, RequestId};
use crate::model::{ConnectionId, Scope};
use crate::service::proxy::{BodyMeter, ProxyRequest, ProxyResponse};
use crate::vault::ReleaseError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/proxy/{connection}/{path:.*}").to(proxy));
}

async fn proxy(req: HttpRequest, state: web::Data<AppState>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let request = proxy_request(&req, &state, payload)?;
    let response = state.services.proxy(request).await?;
    Ok(proxy_response(response))
}

/// One `X-Latchkey-*` header as text.
fn latchkey_header(req: &HttpRequest, name: &str) -> Result<Option<String>, ApiError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| ApiError::invalid(format!("{name} must be printable ASCII"))),
    }
}

fn proxy_request(req: &HttpRequest, state: &AppState, payload: web::Payload) -> Result<ProxyRequest, ApiError> {
    let token = bearer(req.headers()).ok_or_else(ApiError::unauthorized)?;
    let principal = state.services.agent_principal(token).ok_or(ReleaseError::InvalidToken)?;
    // The raw (still percent-encoded) path: `{connection}` and what follows it.
    let rest = req.uri().path().strip_prefix("/v1/proxy/").ok_or_else(ApiError::internal)?;
    let (id, path) = rest.split_once('/').unwrap_or((rest, ""));
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).map_err(|_| ApiError::method_not_allowed())?;
    let mut headers = reqwest::header::HeaderMap::with_capacity(req.headers().len());
    for (name, value) in req.headers() {
        if let (Ok(n), Ok(v)) =
            (reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()), reqwest::header::HeaderValue::from_bytes(value.as_bytes()))
        {
            headers.append(n, v);
        }
    }
    let declared = req.headers().get("content-length").and_then(|v| v.to_str().ok()).map(|v| v.trim().parse::<u64>());
    let body_len = match declared {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(ApiError::invalid("Content-Length is not a number")),
        None => None,
    };
    let chunked = req.headers().contains_key("transfer-encoding");
    let meter = Arc::new(BodyMeter::default());
    let body = (chunked || body_len.is_some_and(|n| n > 0)).then(|| stream_body(payload, meter.clone()));
    Ok(ProxyRequest {
        principal,
        connection: ConnectionId::parse(id)?,
        user_id: latchkey_header(req, "x-latchkey-user")?,
        tenant_id: latchkey_header(req, "x-latchkey-tenant")?,
        scopes: Scope::parse_list(latchkey_header(req, "x-latchkey-scope")?.as_deref().unwrap_or(""))?,
        method,
        path: path.to_owned(),
        query: req.uri().query().map(str::to_owned),
        headers,
        body,
        body_len: body_len.filter(|_| !chunked),
        meter,
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default(),
    })
}

/// The agent's body as a stream the upstream client can take: actix's payload lives on its
/// worker, so a local task pumps it through a small bounded channel (back-pressure: the
/// agent is read no faster than the upstream takes it), counting it against the limit.
fn stream_body(mut payload: web::Payload, meter: Arc<BodyMeter>) -> reqwest::Body {
    use futures_core::Stream;
    use std::future::Future;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        // Stops as soon as nobody reads the channel (a refusal, an upstream that answered),
        // without waiting for the agent's next chunk.
        let mut closed = std::pin::pin!(tx.closed());
        loop {
            let next = std::future::poll_fn(|cx| {
                if closed.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(None);
                }
                Pin::new(&mut payload).poll_next(cx).map(Some)
            })
            .await;
            let Some(Some(chunk)) = next else { break };
            let item = match chunk {
                Ok(b) if meter.add(b.len()) => Ok(b),
                Ok(_) => Err(std::io::Error::other("request body larger than the connection allows")),
                Err(_) => {
                    meter.fail();
                    Err(std::io::Error::other("request body failed"))
                }
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    reqwest::Body::wrap_stream(ChannelBody(rx))
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Result<web::Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<web::Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn proxy_response(r: ProxyResponse) -> HttpResponse {
    let mut b = HttpResponse::build(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in r.headers {
        if let (Ok(n), Ok(v)) = (
            actix_web::http::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            b.append_header((n, v));
        }
    }
    match r.content_length {
        Some(len) => b.no_chunking(len).streaming(r.body),
        None => b.streaming(r.body),
    }
}
