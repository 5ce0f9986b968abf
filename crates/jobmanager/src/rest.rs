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
//!
//! Errors are `{"error": "…"}`: 404 for an unknown job or path (naming it), 409 for
//! cancelling a job that already ended.

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

/// The REST routes over `shared`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/overview", get(overview))
        .route("/taskmanagers", get(taskmanagers))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job).patch(cancel))
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/recoveries", get(recoveries))
        .fallback(unknown_path)
        .with_state(shared)
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
            DispatchError::AlreadyRunning(_) | DispatchError::FailedPrecondition(_) => {
                StatusCode::CONFLICT
            }
            DispatchError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
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

async fn unknown_path(uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", uri.path()),
    )
}
