//! Field selectors (`?fieldSelector=`, `skiff_api::selector::FieldSelector`). Parsing
//! never panics, and a selector that parses prints (escaping its values) a form that
//! parses back to the same terms. Terms are an AND, so they are compared as a set:
//! Kubernetes sorts the raw terms, and escaping may change how they sort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::selector::{FieldOp, FieldSelector};

skiff_fuzz::cap_allocations!();

fn terms(selector: &FieldSelector) -> Vec<(String, bool, String)> {
    let mut terms: Vec<_> = selector
        .requirements()
        .map(|(field, op, value)| (field.to_string(), op == FieldOp::Equals, value.to_string()))
        .collect();
    terms.sort();
    terms
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = skiff_fuzz::text(data) else {
        return;
    };
    let Ok(selector) = FieldSelector::parse(input) else {
        return;
    };
    let printed = selector.to_string();
    let again = FieldSelector::parse(&printed)
        .unwrap_or_else(|e| panic!("{input:?} prints as {printed:?}, which does not parse: {e}"));
    assert_eq!(
        terms(&again),
        terms(&selector),
        "{input:?} prints as {printed:?}, which parses to other terms"
    );
    // An index lookup uses the value of the first `field=` term.
    for (field, _, _) in selector.requirements() {
        let first = selector
            .requirements()
            .find(|(f, op, _)| *f == field && *op == FieldOp::Equals)
            .map(|(_, _, value)| value);
        assert_eq!(selector.requires_exact_match(field), first);
    }
});
