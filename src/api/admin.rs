//! Operator API under `/v1/admin` (admin token required; see `middleware::require_admin`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, method_not_allowed, ApiError, AppState};
use crate::model::{ConnectionId, CredentialInput, NewConnection, Owner};
use crate::vault::AdminPrincipal;

type Admin = web::ReqData<AdminPrincipal>;
type Reply = Result<HttpResponse, ApiError>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    let not_allowed = || web::to(method_not_allowed);
    cfg.service(
        web::resource("/connections")
            .route(web::post().to(create_connection))
            .route(web::get().to(list_connections))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/connections/{id}")
            .route(web::get().to(get_connection))
            .route(web::patch().to(update_connection))
            .route(web::delete().to(delete_connection))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/connections/{id}/credentials")
            .route(web::get().to(list_credentials))
            .default_service(not_allowed()),
    )
    .service(
        web::resource("/connections/{id}/credentials/{owner}")
            .route(web::put().to(put_credential))
            .route(web::get().to(get_credential))
            .route(web::delete().to(delete_credential))
            .default_service(not_allowed()),
    );
}

fn ok(v: impl serde::Serialize) -> Reply {
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(v))
}

async fn create_connection(
    state: web::Data<AppState>,
    admin: Admin,
    body: web::Json<Value>,
) -> Reply {
    let new = NewConnection::from_json(body.into_inner())?;
    let actor = admin.actor();
    let view = blocking(&state, move |v| v.create_connection(&actor, new)).await?;
    Ok(HttpResponse::Created().json(view))
}

async fn list_connections(state: web::Data<AppState>) -> Reply {
    ok(json!({"connections": blocking(&state, |v| v.list_connections()).await?}))
}

async fn get_connection(state: web::Data<AppState>, id: web::Path<String>) -> Reply {
    let id = ConnectionId::parse(&id)?;
    ok(blocking(&state, move |v| v.get_connection(&id)).await?)
}

async fn update_connection(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    body: web::Json<Value>,
) -> Reply {
    let id = ConnectionId::parse(&id)?;
    let actor = admin.actor();
    ok(blocking(&state, move |v| {
        v.update_connection(&actor, &id, body.into_inner())
    })
    .await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    cascade: bool,
}

async fn delete_connection(
    state: web::Data<AppState>,
    admin: Admin,
    id: web::Path<String>,
    q: web::Query<DeleteQuery>,
) -> Reply {
    let id = ConnectionId::parse(&id)?;
    let actor = admin.actor();
    let cascade = q.cascade;
    let n = blocking(&state, move |v| v.delete_connection(&actor, &id, cascade)).await?;
    ok(json!({"deleted": true, "credentials_deleted": n}))
}

fn cred_path(p: &(String, String)) -> Result<(ConnectionId, Owner), ApiError> {
    Ok((ConnectionId::parse(&p.0)?, Owner::parse(&p.1)?))
}

async fn put_credential(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
    body: web::Json<CredentialInput>,
) -> Reply {
    let (id, owner) = cred_path(&path)?;
    let actor = admin.actor();
    ok(blocking(&state, move |v| {
        v.put_credential(&actor, &id, &owner, body.into_inner())
    })
    .await?)
}

async fn get_credential(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Reply {
    let (id, owner) = cred_path(&path)?;
    ok(blocking(&state, move |v| v.get_credential(&id, &owner)).await?)
}

async fn delete_credential(
    state: web::Data<AppState>,
    admin: Admin,
    path: web::Path<(String, String)>,
) -> Reply {
    let (id, owner) = cred_path(&path)?;
    let actor = admin.actor();
    blocking(&state, move |v| v.delete_credential(&actor, &id, &owner)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_credentials(
    state: web::Data<AppState>,
    id: web::Path<String>,
    q: web::Query<Page>,
) -> Reply {
    let id = ConnectionId::parse(&id)?;
    let after = q.after.as_deref().map(Owner::parse).transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let page = blocking(&state, move |v| {
        v.list_credentials(&id, after.as_ref(), limit)
    })
    .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|c| c.owner.clone()))
        .flatten();
    ok(json!({"credentials": page, "next_after": next}))
}
