//! Label selectors (`?labelSelector=`, `skiff_api::selector::LabelSelector`). Parsing
//! never panics; a selector that parses prints a canonical form that parses back to the
//! same selector and prints the same again (what a watch cache key or a 400 message
//! relies on); and matching reads labels alike from a map and from an object's JSON.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use skiff_api::selector::LabelSelector;

skiff_fuzz::cap_allocations!();

fuzz_target!(|data: &[u8]| {
    let Some(input) = skiff_fuzz::text(data) else {
        return;
    };
    let Ok(selector) = LabelSelector::parse(input) else {
        return;
    };
    let canonical = selector.to_string();
    let again = LabelSelector::parse(&canonical)
        .unwrap_or_else(|e| panic!("{input:?} prints as {canonical:?}, which does not parse: {e}"));
    assert_eq!(
        again, selector,
        "{input:?} prints as {canonical:?}, which parses to another selector"
    );
    assert_eq!(
        again.to_string(),
        canonical,
        "the canonical form is not stable"
    );

    // Label sets made of the selector's own keys and values, so that its requirements
    // are both met and missed.
    let requirements = selector.requirements();
    for pick in 0..3 {
        let labels: BTreeMap<String, String> = requirements
            .iter()
            .enumerate()
            .filter(|(i, _)| pick != 2 || i % 2 == 0)
            .map(|(_, r)| {
                let value = match pick {
                    0 => r.values().first(),
                    _ => r.values().last(),
                };
                (r.key().to_string(), value.cloned().unwrap_or_default())
            })
            .collect();
        let object = json!({ "metadata": { "labels": labels } });
        let matched = selector.matches(&labels);
        assert_eq!(
            matched,
            selector.matches_value(&object),
            "{input:?} matches {labels:?} as a map and as JSON differently"
        );
        if matched {
            for r in requirements {
                if let Some(v) = selector.requires_exact_match(r.key()) {
                    assert_eq!(
                        labels.get(r.key()).map(String::as_str),
                        Some(v),
                        "{input:?} matched {labels:?} though it requires {}={v}",
                        r.key()
                    );
                }
            }
        }
    }
});
