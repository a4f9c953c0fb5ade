//! Modules: named by their digest, which the upload path sets and checks, so no name
//! rules here; the TYPE and SIZE columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::{Kind, NameRules};
use crate::kinds::print::{self, AGE, Column, NAME, age, n, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: skiff_api::module::GROUP,
    version: skiff_api::module::VERSION,
    kind: "Module",
    plural: "modules",
    singular: "module",
    namespaced: false,
    short_names: &["mod"],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<skiff_api::module::Module>,
    schema: schema_of::<skiff_api::module::Module>,
};

pub(super) struct Module;

impl Kind for Module {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn name_rules(&self) -> Option<NameRules> {
        None
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Type", "string", 0), ("Size", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            print::name(obj),
            json!(s(obj, "/type")),
            json!(n(obj, "/size")),
            age(obj),
        ]
    }
}
