//! Name and metadata validation with Kubernetes' rules and Kubernetes' wording.
//!
//! The `is_*` checks mirror apimachinery's `util/validation` (`IsDNS1123Subdomain`,
//! `IsDNS1123Label`, `IsQualifiedName`, `IsValidLabelValue`, `IsConfigMapKey`, ...) and
//! return the same human messages, because clients (kubectl, controllers, tests ported
//! from Kubernetes) show or match them. The regular expressions are checked by hand: they
//! are all "a run of allowed bytes that starts and ends with an alphanumeric", which a
//! byte loop decides faster than a regex engine and without a dependency.
//!
//! [`FieldError`] is the Rust shape of apimachinery's `field.Error`: its `message` is
//! what Kubernetes puts into a `Status` cause (`Invalid value: "x": detail`) and its
//! `Display` is what Kubernetes puts into the `Status` message (`field: Invalid value: ...`).

use std::collections::BTreeMap;
use std::fmt;

/// Longest DNS-1123 label (RFC 1123): also the longest name part of a label key.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Longest DNS-1123 subdomain: also the longest object name and label-key prefix.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Longest DNS-1035 label.
pub const DNS1035_LABEL_MAX_LENGTH: usize = 63;
/// Longest label value.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;
/// Longest name part of a qualified name (label or annotation key).
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
/// Total bytes of all annotation keys and values on one object. Annotations are stored
/// and sent with every copy of the object, so Kubernetes caps them at 256 KiB.
pub const TOTAL_ANNOTATION_SIZE_LIMIT_BYTES: usize = 256 * 1024;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_MAP_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_MAP_KEY_ERR_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";

/// Kubernetes has two spellings of the length message: the older `util/validation`
/// checks (DNS names, config keys) count "characters", the newer `validate/content`
/// checks (label keys and values, and the DNS prefix of a label key) count "bytes".
/// Both measure bytes; we keep each spelling where Kubernetes uses it.
#[derive(Clone, Copy)]
enum LengthUnit {
    Characters,
    Bytes,
}

fn max_len_error(length: usize, unit: LengthUnit) -> String {
    match unit {
        LengthUnit::Characters => format!("must be no more than {length} characters"),
        LengthUnit::Bytes => format!("must be no more than {length} bytes"),
    }
}

/// apimachinery's `RegexError`, including its double space before each " or ".
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push('\'');
        out.push_str(example);
        out.push_str("', ");
    }
    out.push_str("regex used for validation is '");
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// A non-empty run of `allowed` bytes that starts with `first` and ends alphanumeric:
/// the shape of every DNS and label regex here.
fn is_bounded_run(
    s: &str,
    first: fn(u8) -> bool,
    allowed: fn(u8) -> bool,
    last: fn(u8) -> bool,
) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => first(f) && last(l) && b.iter().all(|&c| allowed(c)),
        _ => false,
    }
}

fn lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn dns1123_label_matches(s: &str) -> bool {
    is_bounded_run(s, lower_alnum, |c| lower_alnum(c) || c == b'-', lower_alnum)
}

fn dns1123_subdomain_matches(s: &str) -> bool {
    // `label(\.label)*` is exactly "split on dots, every part is a label".
    s.split('.').all(dns1123_label_matches)
}

fn label_key_name_matches(s: &str) -> bool {
    is_bounded_run(
        s,
        |c| c.is_ascii_alphanumeric(),
        |c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'),
        |c| c.is_ascii_alphanumeric(),
    )
}

fn dns1123_subdomain(value: &str, unit: LengthUnit) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH, unit));
    }
    if !dns1123_subdomain_matches(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// `IsDNS1123Subdomain`: object names of most kinds, and label-key prefixes.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    dns1123_subdomain(value, LengthUnit::Characters)
}

/// `IsDNS1123Label`: namespace names, and names that become DNS labels.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(
            DNS1123_LABEL_MAX_LENGTH,
            LengthUnit::Characters,
        ));
    }
    if !dns1123_label_matches(value) {
        if dns1123_subdomain_matches(value) {
            // A valid subdomain that is not a valid label can only differ by its dots.
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// `path.IsValidPathSegmentName`: names that go into a URL path as one segment (the
/// objects an autoscaler refers to, metric names): not `.` or `..`, no `/` or `%`.
pub fn is_path_segment_name(value: &str) -> Vec<String> {
    if value == "." || value == ".." {
        return vec![format!("may not be '{value}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| value.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// `IsDNS1035Label`: Service names, which must not start with a digit.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1035_LABEL_MAX_LENGTH {
        errs.push(max_len_error(
            DNS1035_LABEL_MAX_LENGTH,
            LengthUnit::Characters,
        ));
    }
    let ok = is_bounded_run(
        value,
        |c| c.is_ascii_lowercase(),
        |c| lower_alnum(c) || c == b'-',
        lower_alnum,
    );
    if !ok {
        errs.push(regex_error(
            DNS1035_LABEL_ERR_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// `IsQualifiedName`: label and annotation keys, `[prefix/]name`, where the prefix is a
/// DNS subdomain and the name is at most 63 alphanumerics, `-`, `_` or `.`.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                let prefix_errs = dns1123_subdomain(prefix, LengthUnit::Bytes);
                errs.extend(prefix_errs.into_iter().map(|m| format!("prefix part {m}")));
            }
            *name
        }
        _ => {
            let shape = regex_error(
                LABEL_KEY_ERR_MSG,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"],
            );
            errs.push(format!(
                "a valid label key {shape} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH, LengthUnit::Bytes)
        ));
    }
    if !label_key_name_matches(name) {
        let shape = regex_error(
            LABEL_KEY_ERR_MSG,
            LABEL_KEY_FMT,
            &["MyName", "my.name", "123-abc"],
        );
        errs.push(format!("name part {shape}"));
    }
    errs
}

/// `IsValidLabelValue`: empty, or up to 63 alphanumerics, `-`, `_` or `.` that start
/// and end alphanumeric.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH, LengthUnit::Bytes));
    }
    if !value.is_empty() && !label_key_name_matches(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// `IsConfigMapKey`: keys of ConfigMap and Secret data. They become file names in
/// volumes, hence the ban on `.` and `..` prefixes.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(
            DNS1123_SUBDOMAIN_MAX_LENGTH,
            LengthUnit::Characters,
        ));
    }
    let charset_ok = !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !charset_ok {
        errs.push(regex_error(
            CONFIG_MAP_KEY_ERR_MSG,
            CONFIG_MAP_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if value == "." {
        errs.push("must not be '.'".to_string());
    } else if value == ".." {
        errs.push("must not be '..'".to_string());
    } else if value.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// Why a field failed validation; each maps to a Kubernetes `StatusCause` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldErrorType {
    Invalid,
    Required,
    Duplicate,
    NotSupported,
    TooLong,
    Forbidden,
    NotFound,
}

impl FieldErrorType {
    /// The `StatusCause.reason` string, e.g. `FieldValueInvalid`.
    pub fn cause_type(self) -> &'static str {
        match self {
            FieldErrorType::Invalid => "FieldValueInvalid",
            FieldErrorType::Required => "FieldValueRequired",
            FieldErrorType::Duplicate => "FieldValueDuplicate",
            FieldErrorType::NotSupported => "FieldValueNotSupported",
            FieldErrorType::TooLong => "FieldValueTooLong",
            FieldErrorType::Forbidden => "FieldValueForbidden",
            FieldErrorType::NotFound => "FieldValueNotFound",
        }
    }

    /// The words that open the cause message, e.g. `Invalid value`.
    fn summary(self) -> &'static str {
        match self {
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::Required => "Required value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::NotFound => "Not found",
        }
    }
}

/// One field-level validation failure, like apimachinery's `field.Error`.
///
/// `field` is the path (`metadata.labels`), `message` the cause message Kubernetes
/// puts in `StatusCause.message` (`Invalid value: "Foo": a lowercase ...`). `Display`
/// joins them as `field: message`, which is what goes into `Status.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: FieldErrorType,
    pub message: String,
}

impl FieldError {
    fn with_body(
        field: impl Into<String>,
        reason: FieldErrorType,
        value: Option<&str>,
        detail: &str,
    ) -> Self {
        let mut message = reason.summary().to_string();
        if let Some(value) = value {
            message.push_str(": ");
            message.push_str(value);
        }
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        FieldError {
            field: field.into(),
            reason,
            message,
        }
    }

    /// `field.Invalid` for a string value.
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self::with_body(
            field,
            FieldErrorType::Invalid,
            Some(&go_quote(value)),
            detail,
        )
    }

    /// `field.Invalid` for a list of strings, rendered as JSON like Kubernetes does.
    pub fn invalid_list(field: impl Into<String>, values: &[String], detail: &str) -> Self {
        let rendered = serde_json::to_string(values).unwrap_or_else(|_| "[]".to_string());
        Self::with_body(field, FieldErrorType::Invalid, Some(&rendered), detail)
    }

    /// `field.Required`; `detail` may be empty.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self::with_body(field, FieldErrorType::Required, None, detail)
    }

    /// `field.Duplicate`.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self::with_body(field, FieldErrorType::Duplicate, Some(&go_quote(value)), "")
    }

    /// `field.NotSupported`, listing the values that would have been accepted.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|v| go_quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::with_body(
            field,
            FieldErrorType::NotSupported,
            Some(&go_quote(value)),
            &detail,
        )
    }

    /// `field.TooLong`; like Kubernetes it omits the (large) value itself.
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        let unit = if max_bytes == 1 { "byte" } else { "bytes" };
        let detail = format!("may not be more than {max_bytes} {unit}");
        Self::with_body(field, FieldErrorType::TooLong, None, &detail)
    }

    /// `field.Forbidden`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self::with_body(field, FieldErrorType::Forbidden, None, detail)
    }

    /// `field.NotFound`.
    pub fn not_found(field: impl Into<String>, value: &str) -> Self {
        Self::with_body(field, FieldErrorType::NotFound, Some(&go_quote(value)), "")
    }

    /// The `StatusCause.reason` string, e.g. `FieldValueInvalid`.
    pub fn cause_type(&self) -> &'static str {
        self.reason.cause_type()
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Joins errors the way apimachinery's aggregate error does: one error alone, several
/// deduplicated between `[` and `]`. This is the tail of an `Invalid` Status message
/// (`Pod "x" is invalid: [...]`).
pub fn aggregate_message(errors: &[FieldError]) -> String {
    let mut seen: Vec<String> = Vec::with_capacity(errors.len());
    for e in errors {
        let msg = e.to_string();
        if !seen.contains(&msg) {
            seen.push(msg);
        }
    }
    match seen.len() {
        0 => String::new(),
        1 => seen.pop().unwrap_or_default(),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// `ValidateLabels`: every key a qualified name, every value a label value. Like
/// Kubernetes, each error names the labels map itself (`path`), not the key.
pub fn validate_labels(labels: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (key, value) in labels {
        for msg in is_qualified_name(key) {
            errs.push(FieldError::invalid(path, key, &msg));
        }
        for msg in is_valid_label_value(value) {
            errs.push(FieldError::invalid(path, value, &msg));
        }
    }
    errs
}

/// `ValidateAnnotations`: every key a qualified name (case-insensitively, as in
/// Kubernetes) and all keys and values together within 256 KiB.
pub fn validate_annotations(annotations: &BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut total = 0usize;
    for (key, value) in annotations {
        for msg in is_qualified_name(&key.to_ascii_lowercase()) {
            errs.push(FieldError::invalid(path, key, &msg));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT_BYTES {
        errs.push(FieldError::too_long(
            path,
            TOTAL_ANNOTATION_SIZE_LIMIT_BYTES,
        ));
    }
    errs
}

/// Quotes a string as Go's `%q` does, so messages read exactly like Kubernetes'.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0b}' => out.push_str("\\v"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL_NAME_SHAPE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dns1123_subdomain_accepts_kubernetes_examples() {
        for ok in [
            "a",
            "ab",
            "abc",
            "a1",
            "a-1",
            "a--1--2--b",
            "0",
            "01",
            "012",
            "1a",
            "1-a",
            "1--a--b--2",
            "a.a",
            "ab.a",
            "a-1.a",
            "0.a",
            "a.1",
            "a--1--2--b.0--a",
            "1.2.3.4",
            &"a".repeat(253),
        ] {
            assert!(is_dns1123_subdomain(ok).is_empty(), "{ok} should be valid");
        }
    }

    #[test]
    fn dns1123_subdomain_rejects_kubernetes_examples() {
        for bad in [
            "",
            "A",
            "ABC",
            "aBc",
            "A1",
            "A-1",
            "1-A",
            "-",
            "a-",
            "-a",
            "1-",
            "-1",
            "_",
            "a_",
            "_a",
            "a_b",
            "1_",
            "_1",
            "1_2",
            ".",
            "a.",
            ".a",
            "a..b",
            "1.",
            ".1",
            "1..2",
            " ",
            "a ",
            " a",
            "a b",
            "1 ",
            " 1",
            "1 2",
            "A.a",
            "aB.a",
            "ab.A",
            "A1.a",
            "a1.A",
            "A.1",
            "aB.1",
            "A1.1",
            "1A.1",
            "0.A",
            "01.A",
            "012.A",
            "1A.a",
            "1a.A",
            "A.B.C.D.E",
            "AA.BB.CC.DD.EE",
            "a.B.c.d.e",
            "aa.bB.cc.dd.ee",
            "a@b",
            "a,b",
            "a_b",
            "a;b",
            "a:b",
            "a%b",
            "a?b",
            "a$b",
            &"a".repeat(254),
        ] {
            assert!(
                !is_dns1123_subdomain(bad).is_empty(),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn dns1123_subdomain_message_matches_kubernetes() {
        assert_eq!(
            is_dns1123_subdomain("Foo"),
            vec![
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ]
        );
        let long = is_dns1123_subdomain(&"a".repeat(254));
        assert_eq!(long, vec!["must be no more than 253 characters"]);
    }

    #[test]
    fn dns1123_label_rejects_dots_with_a_specific_message() {
        assert!(is_dns1123_label("my-name").is_empty());
        assert!(is_dns1123_label("123-abc").is_empty());
        assert_eq!(is_dns1123_label("a.b"), vec!["must not contain dots"]);
        assert_eq!(
            is_dns1123_label("-a"),
            vec![
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ]
        );
        assert_eq!(
            is_dns1123_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
        assert!(is_dns1123_label(&"a".repeat(63)).is_empty());
        assert_eq!(is_dns1123_label("").len(), 1);
    }

    #[test]
    fn dns1035_label_must_start_with_a_letter() {
        assert!(is_dns1035_label("my-name").is_empty());
        assert!(is_dns1035_label("abc-123").is_empty());
        for bad in ["", "1abc", "a-", "-a", "A", "a.b", "a_b"] {
            assert_eq!(is_dns1035_label(bad).len(), 1, "{bad:?}");
        }
        assert_eq!(
            is_dns1035_label(&"a".repeat(64)),
            vec!["must be no more than 63 characters"]
        );
    }

    #[test]
    fn qualified_name_accepts_kubernetes_examples() {
        for ok in [
            "simple",
            "now-with-dashes",
            "1-starts-with-num",
            "1234",
            "simple/simple",
            "now-with-dashes/simple",
            "now-with-dashes/now-with-dashes",
            "now.with.dots/simple",
            "now-with.dashes-and.dots/simple",
            "1-num.2-num/3-num",
            "1234/5678",
            "1.2.3.4/5678",
            "Uppercase_Is_OK_123",
            "example.com/Uppercase_Is_OK_123",
            "requests.storage-foo",
            &"a".repeat(63),
            &format!("{}/b", "a".repeat(253)),
        ] {
            assert!(
                is_qualified_name(ok).is_empty(),
                "{ok} should be valid: {:?}",
                is_qualified_name(ok)
            );
        }
    }

    #[test]
    fn qualified_name_rejects_kubernetes_examples() {
        for bad in [
            "nospecialchars%^=@",
            "cantendwithadash-",
            "-cantstartwithadash-",
            "only/one/slash",
            "Example.com/abc",
            "example_com/abc",
            "example.com/",
            "/simple",
            &"a".repeat(64),
            &format!("{}/b", "a".repeat(254)),
        ] {
            assert!(
                !is_qualified_name(bad).is_empty(),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn qualified_name_messages_match_kubernetes() {
        assert_eq!(
            is_qualified_name("-bad"),
            vec![format!("name part {LABEL_NAME_SHAPE}")]
        );
        assert_eq!(
            is_qualified_name("a/b/c"),
            vec![format!(
                "a valid label key {LABEL_NAME_SHAPE} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )]
        );
        assert_eq!(
            is_qualified_name("/a"),
            vec!["prefix part must be non-empty"]
        );
        assert_eq!(
            is_qualified_name("a/"),
            vec![
                "name part must be non-empty".to_string(),
                format!("name part {LABEL_NAME_SHAPE}")
            ]
        );
        assert_eq!(is_qualified_name(""), is_qualified_name("a/"));
        assert_eq!(
            is_qualified_name(&"a".repeat(64)),
            vec!["name part must be no more than 63 bytes"]
        );
        let prefix = is_qualified_name("Example.com/a");
        assert_eq!(prefix.len(), 1);
        assert!(
            prefix[0].starts_with("prefix part a lowercase RFC 1123 subdomain"),
            "{prefix:?}"
        );
        let long_prefix = is_qualified_name(&format!("{}/a", "a".repeat(254)));
        assert_eq!(
            long_prefix,
            vec!["prefix part must be no more than 253 bytes"]
        );
    }

    #[test]
    fn label_values() {
        for ok in [
            "",
            "simple",
            "now-with-dashes",
            "1-starts-with-num",
            "end-with-num-1",
            "1234",
            "Uppercase_Is_OK_123",
            "a.b_c-d",
            &"a".repeat(63),
        ] {
            assert!(is_valid_label_value(ok).is_empty(), "{ok} should be valid");
        }
        for bad in [
            "nospecialchars%^=@",
            "Tama-nui-te-rā.is.Māori.sun",
            "\\backslashes\\are\\bad",
            "-starts-with-dash",
            "ends-with-dash-",
            ".starts.with.dot",
            "ends.with.dot.",
            "a b",
            "a/b",
        ] {
            assert_eq!(
                is_valid_label_value(bad).len(),
                1,
                "{bad} should be invalid"
            );
        }
        assert_eq!(
            is_valid_label_value("-x"),
            vec![
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
            ]
        );
        assert_eq!(
            is_valid_label_value(&"a".repeat(64)),
            vec!["must be no more than 63 bytes"]
        );
    }

    #[test]
    fn config_map_keys() {
        for ok in [
            "a",
            "ab",
            "abc",
            "a1",
            "a-1",
            "a--1--2--b",
            "0",
            "01",
            "012",
            "1a",
            "1-a",
            "1--a--b--2",
            "a.a",
            "ab.a",
            "a-1.a",
            "0.a",
            "a.1",
            "A",
            "AB",
            "a_b",
            "_a",
            ".a",
            "a.",
            ".abc",
            ".a.b",
            &"a".repeat(253),
        ] {
            assert!(
                is_config_map_key(ok).is_empty(),
                "{ok} should be valid: {:?}",
                is_config_map_key(ok)
            );
        }
        assert_eq!(is_config_map_key("."), vec!["must not be '.'"]);
        assert_eq!(is_config_map_key(".."), vec!["must not be '..'"]);
        assert_eq!(is_config_map_key("..a"), vec!["must not start with '..'"]);
        assert_eq!(
            is_config_map_key("a b"),
            vec![
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            ]
        );
        assert_eq!(is_config_map_key("").len(), 1);
        assert_eq!(is_config_map_key("a/b").len(), 1);
        assert_eq!(
            is_config_map_key(&"a".repeat(254)),
            vec!["must be no more than 253 characters"]
        );
    }

    #[test]
    fn field_errors_render_like_kubernetes() {
        let e = FieldError::invalid("metadata.name", "Foo", "bad name");
        assert_eq!(e.message, "Invalid value: \"Foo\": bad name");
        assert_eq!(
            e.to_string(),
            "metadata.name: Invalid value: \"Foo\": bad name"
        );
        assert_eq!(e.cause_type(), "FieldValueInvalid");

        let e = FieldError::required("metadata.name", "name or generateName is required");
        assert_eq!(
            e.to_string(),
            "metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(FieldError::required("spec", "").message, "Required value");
        assert_eq!(
            FieldError::required("spec", "").cause_type(),
            "FieldValueRequired"
        );

        let e = FieldError::duplicate("spec.containers[1].name", "web");
        assert_eq!(e.message, "Duplicate value: \"web\"");
        assert_eq!(e.cause_type(), "FieldValueDuplicate");

        let e = FieldError::not_supported(
            "spec.restartPolicy",
            "Sometimes",
            &["Always", "OnFailure", "Never"],
        );
        assert_eq!(
            e.message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        assert_eq!(e.cause_type(), "FieldValueNotSupported");

        let e = FieldError::too_long("metadata.annotations", 262144);
        assert_eq!(e.message, "Too long: may not be more than 262144 bytes");
        assert_eq!(e.cause_type(), "FieldValueTooLong");
        assert_eq!(
            FieldError::too_long("x", 1).message,
            "Too long: may not be more than 1 byte"
        );

        assert_eq!(
            FieldError::forbidden("spec", "pod updates may not change fields").message,
            "Forbidden: pod updates may not change fields"
        );
        assert_eq!(
            FieldError::forbidden("spec", "").cause_type(),
            "FieldValueForbidden"
        );
        assert_eq!(
            FieldError::not_found("spec.volume", "data").message,
            "Not found: \"data\""
        );
        assert_eq!(
            FieldError::not_found("x", "y").cause_type(),
            "FieldValueNotFound"
        );

        let e = FieldError::invalid_list(
            "values",
            &[],
            "for 'in', 'notin' operators, values set can't be empty",
        );
        assert_eq!(
            e.message,
            "Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
        );
        let e = FieldError::invalid_list("values", &["a".into(), "b".into()], "x");
        assert_eq!(e.message, "Invalid value: [\"a\",\"b\"]: x");
    }

    #[test]
    fn go_quote_escapes_like_percent_q() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("a\nb\tc\u{1}"), "\"a\\nb\\tc\\x01\"");
        assert_eq!(go_quote("rā"), "\"rā\"");
    }

    #[test]
    fn aggregate_joins_and_deduplicates() {
        let a = FieldError::invalid("f", "x", "bad");
        let b = FieldError::required("g", "");
        assert_eq!(aggregate_message(&[]), "");
        assert_eq!(
            aggregate_message(std::slice::from_ref(&a)),
            "f: Invalid value: \"x\": bad"
        );
        assert_eq!(
            aggregate_message(&[a.clone(), b.clone(), a.clone()]),
            "[f: Invalid value: \"x\": bad, g: Required value]"
        );
        assert_eq!(
            aggregate_message(&[a.clone(), a.clone()]),
            "f: Invalid value: \"x\": bad"
        );
    }

    #[test]
    fn validate_labels_reports_keys_and_values_on_the_map_path() {
        assert!(
            validate_labels(
                &map(&[("app", "web"), ("example.com/tier", ""), ("a.b/c_d", "E-1")]),
                "metadata.labels"
            )
            .is_empty()
        );
        let errs = validate_labels(
            &map(&[("bad key", "ok"), ("good", "bad value")]),
            "metadata.labels",
        );
        assert_eq!(errs.len(), 2);
        assert!(
            errs.iter()
                .all(|e| e.field == "metadata.labels" && e.reason == FieldErrorType::Invalid)
        );
        assert!(
            errs[0]
                .message
                .starts_with("Invalid value: \"bad key\": name part must consist"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1]
                .message
                .starts_with("Invalid value: \"bad value\": a valid label must be"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn validate_annotations_checks_keys_case_insensitively_and_total_size() {
        // Kubernetes lowercases annotation keys before checking them, so an uppercase
        // prefix that a label key would reject is fine here.
        assert!(
            validate_annotations(
                &map(&[("Example.COM/Note", "any value at all: {\"json\": true}")]),
                "metadata.annotations"
            )
            .is_empty()
        );
        let errs = validate_annotations(&map(&[("-x", "")]), "metadata.annotations");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.annotations");

        let just_fits = map(&[("k", &"v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT_BYTES - 1))]);
        assert!(validate_annotations(&just_fits, "metadata.annotations").is_empty());
        let too_big = map(&[("k", &"v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT_BYTES))]);
        let errs = validate_annotations(&too_big, "metadata.annotations");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].reason, FieldErrorType::TooLong);
        assert_eq!(
            errs[0].to_string(),
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
    }
}
