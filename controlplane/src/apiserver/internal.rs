//! The API as the server's own loops use it: the same create, update and delete paths
//! clients go through (defaults, validation, system fields, compare-and-swap), without
//! HTTP in between.

use serde_json::Value;

use skiff_api::resources::{ResourceInfo, Subresource};

use super::Target;
use super::crud::{self, Part};
use super::delete::{self, DeleteOptions, Deleted};
use crate::error::ApiResult;
use crate::state::ApiServer;

fn target(
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: Option<&str>,
    sub: Option<Subresource>,
) -> Target {
    Target {
        info,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        sub,
    }
}

/// The stored object, if there is one.
pub async fn get(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Option<Value>> {
    Ok(api
        .store
        .get(&info.key(namespace, name))
        .await
        .map_err(|e| crate::error::ApiError::from_store(e, info, name))?
        .map(|stored| (*stored.object).clone()))
}

/// Creates an object (its namespace, if any, from `namespace`).
pub async fn create(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    object: Value,
) -> ApiResult<Value> {
    let object = crate::kinds::of(info)
        .normalize(object)
        .map_err(|e| crate::error::ApiError::BadRequest(e.to_string()))?;
    crud::create_object(api, &target(info, namespace, None, None), object, false).await
}

/// Read-modify-write of everything but status, retried on lost races. `mutate` gets the
/// stored object and returns the object wanted.
pub async fn update<F>(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    mut mutate: F,
) -> ApiResult<Value>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let t = target(info, namespace, Some(name), None);
    crud::update_object(api, &t, Part::Main, false, |current| {
        Ok((mutate(&current.object)?, None))
    })
    .await
}

/// Read-modify-write of status only, retried on lost races.
pub async fn update_status<F>(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    mut mutate: F,
) -> ApiResult<Value>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let t = target(info, namespace, Some(name), Some(Subresource::Status));
    crud::update_object(api, &t, Part::Status, false, |current| {
        Ok((mutate(&current.object)?, None))
    })
    .await
}

/// Sets the given `.status` fields, keeping the others.
pub async fn merge_status(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    fields: &Value,
) -> ApiResult<Value> {
    update_status(api, info, namespace, name, |cur| {
        let mut next = cur.clone();
        let mut status = cur
            .get("status")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()));
        for (k, v) in fields.as_object().into_iter().flatten() {
            status[k] = v.clone();
        }
        next["status"] = status;
        Ok(next)
    })
    .await
}

/// The `scale` subresource of an object (an `autoscaling/v1` Scale).
pub async fn get_scale(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> ApiResult<Value> {
    let t = target(info, namespace, Some(name), Some(Subresource::Scale));
    super::subresources::read_scale(api, &t).await
}

/// Sets an object's replicas through its `scale` subresource, as `kubectl scale` does;
/// answers the new Scale.
pub async fn set_scale(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    replicas: i64,
) -> ApiResult<Value> {
    let t = target(info, namespace, Some(name), Some(Subresource::Scale));
    super::subresources::write_scale_value(api, &t, |current| {
        let mut scale = current.clone();
        scale["spec"]["replicas"] = serde_json::json!(replicas);
        // The view carries the resourceVersion read; no precondition beyond it.
        crate::objects::meta_mut(&mut scale).remove("resourceVersion");
        Ok(scale)
    })
    .await
}

/// Deletes an object with the given options (propagation, preconditions, grace).
pub async fn delete(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    options: &DeleteOptions,
) -> ApiResult<Deleted> {
    delete::delete_object(api, info, namespace, name, options).await
}
