//! Operator API under `/v1/admin` (admin token required; see `middleware::require_admin`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{not_allowed, ApiError, AppState, Body};
use crate::audit::{Outcome, Query};
use crate::auth::subject::NewIssuer;
use crate::model::{AgentId, ConnectionId, ConnectionPatch, CredentialInput, NewConnection, Owner};
use crate::policy::Policy;
use crate::vault::{AdminPrincipal, NewAgent};

type Admin = web::ReqData<AdminPrincipal>;
type Reply = Result<HttpResponse, ApiError>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/connections")
            .route(web::post().to(create_connection))
            .route(web::get().to(list_connections))
            .default_service(not_allowed("POST, GET")),
    )
    .service(
        web::resource("/connections/{id}")
            .route(web::get().to(get_connection))
            .route(web::patch().to(update_connection))
            .route(web::delete().to(delete_connection))
            .default_service(not_allowed("GET, PATCH, DELETE")),
    )
    .service(web::resource("/connections/{id}/credentials").route(web::get().to(list_credentials)).default_service(not_allowed("GET")))
    .service(
        web::resource("/connections/{id}/credentials/{owner}")
            .route(web::put().to(put_credential))
            .route(web::get().to(get_credential))
            .route(web::delete().to(delete_credential))
            .default_service(not_allowed("PUT, GET, DELETE")),
    )
    .service(
        web::resource("/agents")
            .route(web::post().to(create_agent))
            .route(web::get().to(list_agents))
            .default_service(not_allowed("POST, GET")),
    )
    .service(
        web::resource("/agents/{id}")
            .route(web::get().to(get_agent))
            .route(web::delete().to(delete_agent))
            .default_service(not_allowed("GET, DELETE")),
    )
    .service(web::resource("/agents/{id}/policy").route(web::put().to(set_policy)).default_service(not_allowed("PUT")))
    .service(web::resource("/agents/{id}/secret").route(web::post().to(rotate_secret)).default_service(not_allowed("POST")))
    .service(web::resource("/agents/{id}/disable").route(web::post().to(disable_agent)).default_service(not_allowed("POST")))
    .service(web::resource("/agents/{id}/enable").route(web::post().to(enable_agent)).default_service(not_allowed("POST")))
    .service(
        web::resource("/issuers")
            .route(web::post().to(put_issuer))
            .route(web::get().to(list_issuers))
            .route(web::delete().to(delete_issuer))
            .default_service(not_allowed("POST, GET, DELETE")),
    )
    .service(web::resource("/audit").route(web::get().to(audit)).default_service(not_allowed("GET")));
}

fn ok(v: impl serde::Serialize) -> Reply {
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(v))
}

async fn create_connection(state: web::Data<AppState>, admin: Admin, body: Body<Value>) -> Reply {
    let new = NewConnection::from_json(body.0)?;
    let actor = admin.actor();
    let view = state.blocking(move |v| v.create_connection(&actor, new)).await?;
    Ok(HttpResponse::Created().json(view))
}

async fn list_connections(state: web::Data<AppState>) -> Reply {
    ok(json!({"connections": state.blocking(|v| v.list_connections()).await?}))
}

async fn get_connection(state: web::Data<AppState>, id: web::Path<String>) -> Reply {
    let id = ConnectionId::parse(&id)?;
    ok(state.blocking(move |v| v.get_connection(&id)).await?)
}

async fn update_connection(state: web::Data<AppState>, admin: Admin, id: web::Path<String>, body: Body<Value>) -> Reply {
    let id = ConnectionId::parse(&id)?;
    let patch = ConnectionPatch::from_json(body.0)?;
    let actor = admin.actor();
    ok(state.blocking(move |v| v.update_connection(&actor, &id, patch)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    cascade: bool,
}

async fn delete_connection(state: web::Data<AppState>, admin: Admin, id: web::Path<String>, q: web::Query<DeleteQuery>) -> Reply {
    let id = ConnectionId::parse(&id)?;
    let n = state.services.delete_connection(admin.actor(), id, q.cascade).await?;
    ok(json!({"deleted": true, "credentials_deleted": n}))
}

fn cred_path(p: &(String, String)) -> Result<(ConnectionId, Owner), ApiError> {
    Ok((ConnectionId::parse(&p.0)?, Owner::parse(&p.1)?))
}

async fn put_credential(state: web::Data<AppState>, admin: Admin, path: web::Path<(String, String)>, body: Body<CredentialInput>) -> Reply {
    let (id, owner) = cred_path(&path)?;
    let actor = admin.actor();
    ok(state.blocking(move |v| v.put_credential(&actor, &id, &owner, body.0)).await?)
}

async fn get_credential(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Reply {
    let (id, owner) = cred_path(&path)?;
    ok(state.blocking(move |v| v.get_credential(&id, &owner)).await?)
}

/// Disconnect: revoke at the provider where possible, then destroy.
async fn delete_credential(state: web::Data<AppState>, admin: Admin, path: web::Path<(String, String)>) -> Reply {
    let (id, owner) = cred_path(&path)?;
    state.services.disconnect(admin.actor(), id, owner).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_credentials(state: web::Data<AppState>, id: web::Path<String>, q: web::Query<Page>) -> Reply {
    let id = ConnectionId::parse(&id)?;
    let after = q.after.as_deref().map(Owner::parse).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let page = state.blocking(move |v| v.list_credentials(&id, after.as_ref(), limit)).await?;
    let next = (page.len() == limit).then(|| page.last().map(|c| c.owner.clone())).flatten();
    ok(json!({"credentials": page, "next_after": next}))
}

async fn create_agent(state: web::Data<AppState>, admin: Admin, body: Body<NewAgent>) -> Reply {
    let actor = admin.actor();
    let (agent, secret) = state.blocking(move |v| v.create_agent(&actor, body.0)).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"client_id": agent.client_id, "client_secret": secret.expose(), "agent": agent})))
}

async fn list_agents(state: web::Data<AppState>) -> Reply {
    ok(json!({"agents": state.blocking(|v| v.list_agents()).await?}))
}

async fn get_agent(state: web::Data<AppState>, id: web::Path<String>) -> Reply {
    let id = AgentId::parse(&id)?;
    ok(state.blocking(move |v| v.get_agent(&id)).await?)
}

async fn delete_agent(state: web::Data<AppState>, admin: Admin, id: web::Path<String>) -> Reply {
    let id = AgentId::parse(&id)?;
    let actor = admin.actor();
    state.blocking(move |v| v.delete_agent(&actor, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn set_policy(state: web::Data<AppState>, admin: Admin, id: web::Path<String>, body: Body<Policy>) -> Reply {
    let id = AgentId::parse(&id)?;
    let actor = admin.actor();
    ok(state.blocking(move |v| v.set_agent_policy(&actor, &id, body.0)).await?)
}

async fn rotate_secret(state: web::Data<AppState>, admin: Admin, id: web::Path<String>) -> Reply {
    let id = AgentId::parse(&id)?;
    let actor = admin.actor();
    let client_id = id.to_string();
    let secret = state.blocking(move |v| v.rotate_agent_secret(&actor, &id)).await?;
    ok(json!({"client_id": client_id, "client_secret": secret.expose()}))
}

async fn set_disabled(state: web::Data<AppState>, admin: Admin, id: web::Path<String>, disabled: bool) -> Reply {
    let id = AgentId::parse(&id)?;
    let actor = admin.actor();
    ok(state.blocking(move |v| v.set_agent_disabled(&actor, &id, disabled)).await?)
}

async fn disable_agent(state: web::Data<AppState>, admin: Admin, id: web::Path<String>) -> Reply {
    set_disabled(state, admin, id, true).await
}

async fn enable_agent(state: web::Data<AppState>, admin: Admin, id: web::Path<String>) -> Reply {
    set_disabled(state, admin, id, false).await
}

async fn put_issuer(state: web::Data<AppState>, admin: Admin, body: Body<NewIssuer>) -> Reply {
    let cfg = state.services.put_issuer(admin.actor(), body.0).await?;
    Ok(HttpResponse::Created().json(cfg))
}

async fn list_issuers(state: web::Data<AppState>) -> Reply {
    ok(json!({"issuers": state.blocking(|v| v.list_issuers()).await?}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerQuery {
    issuer: String,
}

async fn delete_issuer(state: web::Data<AppState>, admin: Admin, q: web::Query<IssuerQuery>) -> Reply {
    state.services.delete_issuer(admin.actor(), q.into_inner().issuer).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<usize>,
    connection: Option<String>,
    agent: Option<String>,
    owner: Option<String>,
    decision: Option<String>,
}

async fn audit(state: web::Data<AppState>, q: web::Query<AuditQuery>) -> Reply {
    let query = audit_query(q.into_inner())?;
    let limit = query.limit;
    let records = state.blocking(move |v| v.audit_query(&query)).await?;
    let next_after = (records.len() == limit).then(|| records.last().map(|r| r.seq)).flatten();
    let records: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
    ok(json!({"records": records, "next_after": next_after}))
}

fn audit_query(q: AuditQuery) -> Result<Query, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let outcome = match q.decision.as_deref() {
        None => None,
        Some("allow" | "ok") => Some(Outcome::Ok),
        Some("deny" | "denied") => Some(Outcome::Denied),
        Some("failed") => Some(Outcome::Failed),
        Some(_) => return Err(ApiError::invalid("decision must be allow, deny or failed")),
    };
    Ok(Query {
        after: q.after.unwrap_or(0),
        limit,
        connection: q.connection.as_deref().map(ConnectionId::parse).transpose()?.map(|c| c.to_string()),
        agent: q.agent.as_deref().map(AgentId::parse).transpose()?.map(|a| a.to_string()),
        owner: q.owner.as_deref().map(Owner::parse).transpose()?.map(|o| o.to_string()),
        outcome,
    })
}
