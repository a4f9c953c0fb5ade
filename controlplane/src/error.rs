//! API errors, each answered as a Kubernetes `meta/v1` Status with the reason and code
//! clients switch on. Client mistakes are not logged; server faults are, without leaking
//! their internals to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;
use skiff_api::validation::FieldError;

use crate::store::StoreError;

/// Which object an error is about, for `Status.details`.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The resource's group, plural and kind.
    pub group: &'static str,
    pub plural: &'static str,
    resource_kind: &'static str,
    pub name: String,
    /// The kind named in an Invalid error when it is not the resource's own (a Scale,
    /// a Binding).
    pub kind: Option<&'static str>,
}

impl Subject {
    pub fn new(info: &'static ResourceInfo, name: &str) -> Subject {
        Subject {
            group: info.group,
            plural: info.plural,
            resource_kind: info.kind,
            name: name.to_string(),
            kind: None,
        }
    }

    /// A namespace: what a write into a namespace that does not exist is missing.
    pub fn namespace(name: &str) -> Subject {
        Subject {
            group: "",
            plural: "namespaces",
            resource_kind: "Namespace",
            name: name.to_string(),
            kind: None,
        }
    }

    /// A resource served outside the kinds table (the metrics APIs), named as
    /// Kubernetes names it: `podmetrics.metrics.k8s.io "web" not found`.
    pub fn virtual_resource(
        group: &'static str,
        plural: &'static str,
        kind: &'static str,
        name: &str,
    ) -> Subject {
        Subject {
            group,
            plural,
            resource_kind: kind,
            name: name.to_string(),
            kind: None,
        }
    }

    /// A token record (`skiff token`): not a served kind, named as one would be.
    pub fn token(id: &str) -> Subject {
        Subject {
            group: "skiff.dev",
            plural: "tokens",
            resource_kind: "Token",
            name: id.to_string(),
            kind: None,
        }
    }

    /// The resource as Kubernetes names it in errors: `pods`, `deployments.apps`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn with_kind(mut self, kind: &'static str) -> Subject {
        self.kind = Some(kind);
        self
    }

    fn kind(&self) -> &str {
        self.kind.unwrap_or(self.resource_kind)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{} \"{}\" not found", .0.qualified_plural(), .0.name)]
    NotFound(Subject),
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{} \"{}\" already exists", .0.qualified_plural(), .0.name)]
    AlreadyExists(Subject),
    #[error("Operation cannot be fulfilled on {} \"{}\": {}", .0.qualified_plural(), .0.name, .1)]
    Conflict(Subject, String),
    /// A server-side apply would change fields other managers own: the message
    /// (`Apply failed with 1 conflict: ...`) and a (message, field) cause per field, of
    /// type `FieldManagerConflict`.
    #[error("{0}")]
    ApplyConflict(String, Vec<(String, String)>),
    #[error("{} \"{}\" is invalid: {}", .0.kind(), .0.name, render_causes(.1))]
    Invalid(Subject, Vec<FieldError>),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    Forbidden(String),
    /// No credentials, or credentials that are not (or no longer) valid.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Timeout(String),
    /// Refused for now, to be retried: an eviction a disruption budget does not allow.
    /// Its causes are (type, message) pairs, as Kubernetes reports them.
    #[error("{0}")]
    TooManyRequests(String, Vec<(&'static str, String)>),
    #[error("the server is shutting down")]
    Unavailable,
    /// A node or other upstream the request needed failed; its error is the client's
    /// business (as kube-apiserver shows kubelet errors), so it is not hidden.
    #[error("{0}")]
    Upstream(String),
    #[error("an internal error occurred")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn render_causes(causes: &[FieldError]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    match parts.len() {
        1 => parts[0].clone(),
        _ => format!("[{}]", parts.join(", ")),
    }
}

impl ApiError {
    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists(_) | ApiError::Conflict(..) | ApiError::ApplyConflict(..) => {
                StatusCode::CONFLICT
            }
            ApiError::Invalid(..) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Expired(_) => StatusCode::GONE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Upstream(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::NotFound(_) | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(..) | ApiError::ApplyConflict(..) => "Conflict",
            ApiError::Invalid(..) => "Invalid",
            ApiError::Expired(_) => "Expired",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::TooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Timeout(_) => "Timeout",
            ApiError::TooManyRequests(..) => "TooManyRequests",
            ApiError::Unavailable => "ServiceUnavailable",
            ApiError::Internal(_) | ApiError::Upstream(_) => "InternalError",
        }
    }

    /// The error as a `meta/v1` Status object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound(s) | ApiError::AlreadyExists(s) | ApiError::Conflict(s, _) => {
                Some(json!({"name": s.name, "group": s.group, "kind": s.plural}))
            }
            ApiError::Invalid(s, causes) => Some(json!({
                "name": s.name,
                "group": s.group,
                "kind": s.kind(),
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason.cause_type(),
                    "message": c.message,
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::ApplyConflict(_, causes) => Some(json!({
                "causes": causes.iter().map(|(message, field)| json!({
                    "reason": "FieldManagerConflict",
                    "message": message,
                    "field": field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::TooManyRequests(_, causes) if !causes.is_empty() => Some(json!({
                "causes": causes.iter().map(|(reason, message)| json!({
                    "reason": reason,
                    "message": message,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(mut d) = details {
            if d["group"] == "" {
                d.as_object_mut().map(|m| m.remove("group"));
            }
            status["details"] = d;
        }
        status
    }

    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::TooLarge(format!(
            "the request body is larger than the limit of {limit} bytes"
        ))
    }

    pub fn invalid(info: &'static ResourceInfo, name: &str, causes: Vec<FieldError>) -> ApiError {
        ApiError::Invalid(Subject::new(info, name), causes)
    }

    pub fn not_found(info: &'static ResourceInfo, name: &str) -> ApiError {
        ApiError::NotFound(Subject::new(info, name))
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        ApiError::Internal(Box::new(e))
    }

    /// Maps a store failure on one object to the error a client expects.
    pub fn from_store(e: StoreError, info: &'static ResourceInfo, name: &str) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(info, name),
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(Subject::new(info, name)),
            StoreError::Conflict { .. } => ApiError::Conflict(
                Subject::new(info, name),
                "the object has been modified; please apply your changes to the latest version and try again".into(),
            ),
            StoreError::GuardMissing { guard } => {
                ApiError::NotFound(Subject::namespace(guard.rsplit('/').next().unwrap_or_default()))
            }
            StoreError::Compacted { requested, compacted } => {
                ApiError::Expired(format!("too old resource version: {requested} ({compacted})"))
            }
            StoreError::Closed => ApiError::Unavailable,
            other => ApiError::internal(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::Closed => ApiError::Unavailable,
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed with an internal error");
        }
        let code = self.code();
        (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.status().to_string(),
        )
            .into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
