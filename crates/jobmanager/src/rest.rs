//! The REST API (axum, JSON; shapes in [`crate::view`]):
//!
//! | method, path                  | answer                                             |
//! |-------------------------------|----------------------------------------------------|
//! | `GET /overview`               | [`Overview`](crate::view::Overview)                 |
//! | `GET /taskmanagers`           | [`TaskManagersView`](crate::view::TaskManagersView) |
//! | `GET /jobs`                   | [`JobsView`](crate::view::JobsView)                 |
//! | `GET /jobs/{id}`              | [`JobDetails`](crate::view::JobDetails)             |
//! | `GET /jobs/{id}/checkpoints`  | [`CheckpointsView`](crate::view::CheckpointsView)   |
//! | `GET /jobs/{id}/recoveries`   | [`RecoveriesView`](crate::view::RecoveriesView)     |
//! | `PATCH /jobs/{id}`            | cancels the job (Flink's `PATCH /jobs/:id`): 202    |
//! | `POST /jobs/{id}/savepoints`  | triggers a savepoint: 202 `{"request-id": n}`       |
//! | `POST /jobs/{id}/stop`        | stops the job with a savepoint: 202, as above      |
//! | `GET /jobs/{id}/savepoints/{n}` | [`SavepointOperation`](crate::view::SavepointOperation) |
//! | `GET /metrics`                | Prometheus text format ([`crate::metrics`])         |
//! | `GET /`, `GET /ui/{asset}`    | the web UI ([`crate::ui`])                          |
//!
//! The POST bodies are JSON, every field optional: `{"target-directory": url, "format-type":
//! "canonical" | "native"}`, and for `/stop` also `"drain": bool`.
//!
//! Every path but the web UI's (`/`, `/ui/…`) needs `Authorization: Bearer <token>` when the
//! JobManager has a token; without it the answer is 401 and nothing else.
//!
//! Errors are `{"error": "…"}`: 404 for an unknown job or path (naming it), 409 for
//! cancelling a job that already ended. A standby JobManager (high availability) answers
//! every path with 503, `{"error": "… stands by; the leader … is at …", "leader": {"epoch",
//! "rpc", "rest"}}`.

use crate::cluster::Shared;
use crate::error::DispatchError;
use crate::view::ErrorBody;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use weir_coordination::driver::now_ms;

/// The REST routes over `shared`, with the web UI and `/metrics` (both answered by a standby
/// too: the UI says who leads, and a standby's figures are its own).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/overview", get(overview))
        .route("/taskmanagers", get(taskmanagers))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job).patch(cancel))
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/recoveries", get(recoveries))
        .route(
            "/jobs/{id}/savepoints",
            axum::routing::post(trigger_savepoint),
        )
        .route("/jobs/{id}/stop", axum::routing::post(stop_with_savepoint))
        .route("/jobs/{id}/savepoints/{request}", get(savepoint_status))
        .fallback(unknown_path)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            only_when_leading,
        ));
    // Layers run outside in: the token is checked before anything else looks at a request.
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            only_with_token,
        ));
    Router::new()
        .merge(crate::ui::routes())
        .merge(guarded)
        .with_state(shared)
}

/// Lets a request through when it carries the cluster's token (or none is configured);
/// otherwise 401 and nothing else.
async fn only_with_token(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let allowed = shared.options.auth.as_ref().is_none_or(|token| {
        token.allows(
            request
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    });
    if allowed {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        Json(ErrorBody {
            error: "missing or wrong token: send Authorization: Bearer <security.auth.token>"
                .into(),
        }),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, weir_metrics::CONTENT_TYPE)],
        shared.metrics_text(),
    )
}

/// Lets a request through when this JobManager may act; a standby answers 503 naming the
/// leader.
async fn only_when_leading(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match (&shared.ha, shared.may_act()) {
        (Some(ha), Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string(), "leader": ha.leader() })),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<DispatchError> for ApiError {
    fn from(e: DispatchError) -> Self {
        let code = match e {
            DispatchError::UnknownJob(_) => StatusCode::NOT_FOUND,
            DispatchError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            DispatchError::AlreadyRunning(_)
            | DispatchError::FailedPrecondition(_)
            | DispatchError::NothingToResume(_)
            | DispatchError::FolderInUse(_) => StatusCode::CONFLICT,
            DispatchError::ShuttingDown | DispatchError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DispatchError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

async fn overview(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.overview())
}

async fn taskmanagers(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.resources().view(now_ms()))
}

async fn jobs(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.jobs_view())
}

async fn job(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(shared.job_status(&id)?.details(now_ms())))
}

async fn checkpoints(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(shared.job_status(&id)?.checkpoints()))
}

async fn recoveries(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(shared.job_status(&id)?.recoveries()))
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    shared.cancel(&id)?;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "job": id }))))
}

/// The body of `POST /jobs/{id}/savepoints` and `/stop`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct SavepointBody {
    target_directory: Option<String>,
    format_type: Option<String>,
    #[serde(default)]
    drain: bool,
}

async fn savepoint(
    shared: Arc<Shared>,
    id: String,
    body: Option<Json<SavepointBody>>,
    stop: bool,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let request = crate::dispatcher::savepoint_request(
        body.target_directory.as_deref().unwrap_or(""),
        body.format_type.as_deref().unwrap_or(""),
        stop,
        body.drain,
    )?;
    let request_id = tokio::task::spawn_blocking(move || shared.trigger_savepoint(&id, request))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "request-id": request_id })),
    ))
}

async fn trigger_savepoint(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Option<Json<SavepointBody>>,
) -> Result<impl IntoResponse, ApiError> {
    savepoint(shared, id, body, false).await
}

async fn stop_with_savepoint(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Option<Json<SavepointBody>>,
) -> Result<impl IntoResponse, ApiError> {
    savepoint(shared, id, body, true).await
}

async fn savepoint_status(
    State(shared): State<Arc<Shared>>,
    Path((id, request)): Path<(String, u64)>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(shared.savepoint_status(&id, request)?))
}

async fn unknown_path(uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzed_savepoint_bodies_and_job_paths_are_refused_or_read_never_a_panic() {
        let bodies = vec![
            br#"{"target-directory":"file:///tmp/sp","format-type":"native","drain":true}"#
                .to_vec(),
            br#"{}"#.to_vec(),
            br#"{"format-type":"canonical"}"#.to_vec(),
        ];
        weir_fuzz::run("REST savepoint body", &bodies, |bytes| {
            let _ = serde_json::from_slice::<SavepointBody>(bytes);
        });
        let ids = vec![
            b"0123456789abcdef0123456789abcdef".to_vec(),
            b"ffffffffffffffffffffffffffffffff".to_vec(),
        ];
        weir_fuzz::run("REST job id", &ids, |bytes| {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = weir_types::JobId::parse(text);
            }
        });
    }
}
