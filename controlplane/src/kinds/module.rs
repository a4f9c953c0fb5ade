//! Modules: named by their digest, which the upload path sets and checks, so no name
//! rules here; the TYPE and SIZE columns.

use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;

use super::{Kind, NameRules};
use crate::apiserver::tables::{self, AGE, Column, NAME, age, n, s};

pub(super) struct Module;

impl Kind for Module {
    fn info(&self) -> &'static ResourceInfo {
        served!(skiff_api::module::GROUP, "modules")
    }

    fn name_rules(&self) -> Option<NameRules> {
        None
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Type", "string", 0), ("Size", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            tables::name(obj),
            json!(s(obj, "/type")),
            json!(n(obj, "/size")),
            age(obj),
        ]
    }
}
