//! Label and field selectors, parsed and matched exactly as Kubernetes does.
//!
//! [`LabelSelector`] follows apimachinery's `labels.Parse` token for token, including its
//! corners (`x in ()` means "x is the empty string", `in` and `notin` may be keys and
//! values, `!x=a` is an error, `gt`/`lt` compare integers), and renders the canonical
//! string `metav1.FormatLabelSelector` would. [`FieldSelector`] follows
//! `fields.ParseSelector`: `=`, `==` and `!=` terms only, with `\,`, `\=` and `\\`
//! escapes in values. Which fields a resource supports is the server's business, so it
//! is not decided here: [`FieldSelector::requirements`] lets the server check.
//!
//! Error messages are Kubernetes' own, so the server can put them straight into a 400
//! `Status` and kubectl users see what they would see against a real cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use crate::validation::{
    FieldError, aggregate_message, go_quote, is_qualified_name, is_valid_label_value,
};

/// Why a label or field selector was rejected. Each message reads like Kubernetes'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector string has a token where the grammar allows none, between
    /// requirements (e.g. a trailing `,`).
    #[error("found '{found}', expected: {expected}")]
    UnexpectedToken {
        found: String,
        expected: &'static str,
    },
    /// A requirement inside a label selector string is malformed (e.g. `x in a`).
    #[error("unable to parse requirement: found '{found}', expected: {expected}")]
    MalformedRequirement {
        found: String,
        expected: &'static str,
    },
    /// A requirement in a label selector string names an invalid key or value.
    #[error("unable to parse requirement: {}", aggregate_message(.0))]
    InvalidRequirement(Vec<FieldError>),
    /// A `metav1.LabelSelector` has an invalid key or value or a wrong number of values.
    #[error("{}", aggregate_message(.0))]
    InvalidLabelSelector(Vec<FieldError>),
    /// A `metav1.LabelSelector` expression uses an operator other than In, NotIn,
    /// Exists and DoesNotExist.
    #[error("{} is not a valid label selector operator", go_quote(.0))]
    UnknownLabelSelectorOperator(String),
    /// A field selector term has no `=`, `==` or `!=` (set operators land here too).
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    MalformedFieldTerm { selector: String, term: String },
    /// A field selector value has a `\` not followed by `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscapeSequence(String),
    /// A field selector value has a bare `,` or `=` that should have been escaped.
    // Kubernetes prints the character's code point here (`61`); the character is kinder.
    #[error("invalid field selector: unescaped character in value: '{0}'")]
    UnescapedCharacter(char),
}

/// The relation a label requirement asserts, as apimachinery's `selection.Operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

impl Operator {
    /// The `selection.Operator` spelling (`in`, `notin`, `=`, `==`, `!=`, `exists`, `!`,
    /// `gt`, `lt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
            Operator::GreaterThan => "gt",
            Operator::LessThan => "lt",
        }
    }
}

/// One `key op values` term of a label selector; all terms must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and deduplicated when parsed from a string (Kubernetes keeps a set);
    /// as given when converted from a `metav1.LabelSelector`.
    values: Vec<String>,
}

impl Requirement {
    /// Validates like apimachinery's `NewRequirement`; errors carry its field paths.
    fn new(key: String, operator: Operator, values: Vec<String>) -> Result<Self, Vec<FieldError>> {
        let mut errs = Vec::new();
        let key_errs = is_qualified_name(&key);
        if !key_errs.is_empty() {
            errs.push(FieldError::invalid("key", &key, &key_errs.join("; ")));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errs.push(FieldError::invalid_list(
                    "values",
                    &values,
                    "for 'in', 'notin' operators, values set can't be empty",
                ))
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(FieldError::invalid_list(
                    "values",
                    &values,
                    "exact-match compatibility requires one single value",
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                errs.push(FieldError::invalid_list(
                    "values",
                    &values,
                    "values set must be empty for exists and does not exist",
                ))
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(FieldError::invalid_list(
                        "values",
                        &values,
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(FieldError::invalid(
                            format!("values[{i}]"),
                            v,
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let value_errs = is_valid_label_value(v);
            if !value_errs.is_empty() {
                errs.push(FieldError::invalid(
                    format!("values[{i}][{key}]"),
                    v,
                    &value_errs.join("; "),
                ));
            }
        }
        if errs.is_empty() {
            Ok(Requirement {
                key,
                operator,
                values,
            })
        } else {
            Err(errs)
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    pub fn values(&self) -> &[String] {
        &self.values
    }

    fn has_value(&self, v: &str) -> bool {
        self.values.iter().any(|x| x == v)
    }

    /// Whether labels (looked up through `get`) satisfy this requirement. A missing key
    /// satisfies only `notin`, `!=` and `!key`.
    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                value.is_some_and(|v| self.has_value(v))
            }
            Operator::NotIn | Operator::NotEquals => value.is_none_or(|v| !self.has_value(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(actual) = value.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let [bound] = self.values.as_slice() else {
                    return false;
                };
                let Ok(bound) = bound.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in (",
            Operator::NotIn => " notin (",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        f.write_str(op)?;
        // Values print sorted so equal selectors print equal.
        let mut values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        values.sort_unstable();
        f.write_str(&values.join(","))?;
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A parsed label selector: the AND of its requirements, sorted by key. The empty
/// selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the `labelSelector` query syntax, as `labels.Parse`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            tokens: lex(s),
            position: 0,
        };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Converts a `metav1.LabelSelector` (matchLabels and matchExpressions), as
    /// `metav1.LabelSelectorAsSelector`. An empty struct matches everything. Callers
    /// that treat an absent selector as "nothing" (controllers) handle `None` themselves.
    pub fn from_label_selector(sel: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let r = Requirement::new(k.clone(), Operator::Equals, vec![v.clone()])
                .map_err(SelectorError::InvalidLabelSelector)?;
            requirements.push(r);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::UnknownLabelSelectorOperator(
                        other.to_string(),
                    ));
                }
            };
            let values = expr.values.clone().unwrap_or_default();
            let r = Requirement::new(expr.key.clone(), operator, values)
                .map_err(SelectorError::InvalidLabelSelector)?;
            requirements.push(r);
        }
        // Stable, so matchLabels stay ahead of expressions on the same key.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// A selector requiring exactly these labels, as `labels.SelectorFromValidatedSet`
    /// (e.g. a Service's `spec.selector`). The map is trusted: it was validated when the
    /// object holding it was stored.
    pub fn from_match_labels(labels: &BTreeMap<String, String>) -> Self {
        let requirements = labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        LabelSelector { requirements }
    }

    /// True if the selector has no requirements and so matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_with(|k| labels.get(k).map(String::as_str)))
    }

    /// Matches against `metadata.labels` of an object's JSON; no labels means an empty
    /// set (so `!key` and `notin` still match). Non-string label values are ignored.
    pub fn matches_value(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.requirements
            .iter()
            .all(|r| r.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str)))
    }

    /// The single value this selector forces `key` to have, if it does (`key=v`,
    /// `key==v` or `key in (v)`), so a caller can use an index instead of a scan.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [v]) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical form, e.g. `app=web,tier in (a,b)`; empty for the empty selector
    /// (where `FormatLabelSelector` would say `<none>`), so the output parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---- label selector lexer and parser (apimachinery's, rule for rule) ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier(&'a str),
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

impl<'a> Token<'a> {
    /// The text quoted in error messages (empty at end of string, as in Kubernetes).
    fn literal(self) -> &'a str {
        match self {
            Token::End => "",
            Token::ClosedPar => ")",
            Token::Comma => ",",
            Token::DoesNotExist => "!",
            Token::DoubleEquals => "==",
            Token::Equals => "=",
            Token::GreaterThan => ">",
            Token::Identifier(s) => s,
            Token::In => "in",
            Token::LessThan => "<",
            Token::NotEquals => "!=",
            Token::NotIn => "notin",
            Token::OpenPar => "(",
        }
    }
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special_symbol(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits a selector into tokens, ending with `End`. Splits happen only at ASCII bytes,
/// so every identifier slice is valid UTF-8; non-ASCII characters end up inside
/// identifiers and fail key/value validation, as in Kubernetes.
fn lex(s: &str) -> Vec<Token<'_>> {
    let bytes = s.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            tokens.push(Token::End);
            return tokens;
        }
        let c = bytes[pos];
        if is_special_symbol(c) {
            // Longest match: the only two-symbol tokens are `==` and `!=`.
            let next = bytes.get(pos + 1).copied();
            let (token, len) = match (c, next) {
                (b'=', Some(b'=')) => (Token::DoubleEquals, 2),
                (b'!', Some(b'=')) => (Token::NotEquals, 2),
                (b'=', _) => (Token::Equals, 1),
                (b'!', _) => (Token::DoesNotExist, 1),
                (b'(', _) => (Token::OpenPar, 1),
                (b')', _) => (Token::ClosedPar, 1),
                (b',', _) => (Token::Comma, 1),
                (b'>', _) => (Token::GreaterThan, 1),
                _ => (Token::LessThan, 1),
            };
            tokens.push(token);
            pos += len;
        } else {
            let start = pos;
            while pos < bytes.len() && !is_special_symbol(bytes[pos]) && !is_whitespace(bytes[pos])
            {
                pos += 1;
            }
            tokens.push(match &s[start..pos] {
                "in" => Token::In,
                "notin" => Token::NotIn,
                ident => Token::Identifier(ident),
            });
        }
    }
}

/// Where `in` and `notin` are keywords: only in operator position. Everywhere else they
/// are plain identifiers, so `in in (in)` is a valid selector.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    position: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

fn malformed(found: Token<'_>, expected: &'static str) -> SelectorError {
    SelectorError::MalformedRequirement {
        found: found.literal().to_string(),
        expected,
    }
}

impl<'a> Parser<'a> {
    fn in_context(token: Token<'a>, context: Context) -> Token<'a> {
        match (context, token) {
            (Context::Values, Token::In) => Token::Identifier("in"),
            (Context::Values, Token::NotIn) => Token::Identifier("notin"),
            _ => token,
        }
    }

    fn lookahead(&self, context: Context) -> Token<'a> {
        // `lex` always ends with End, and nothing consumes past it without failing.
        let token = self
            .tokens
            .get(self.position)
            .copied()
            .unwrap_or(Token::End);
        Self::in_context(token, context)
    }

    fn consume(&mut self, context: Context) -> Token<'a> {
        let token = self.lookahead(context);
        if self.position < self.tokens.len() {
            self.position += 1;
        }
        token
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            match self.lookahead(Context::Values) {
                Token::Identifier(_) | Token::DoesNotExist => {
                    requirements.push(self.parse_requirement()?);
                    match self.consume(Context::Values) {
                        Token::End => return Ok(requirements),
                        Token::Comma => {
                            let next = self.lookahead(Context::Values);
                            if !matches!(next, Token::Identifier(_) | Token::DoesNotExist) {
                                return Err(SelectorError::UnexpectedToken {
                                    found: next.literal().to_string(),
                                    expected: "identifier after ','",
                                });
                            }
                        }
                        other => {
                            return Err(SelectorError::UnexpectedToken {
                                found: other.literal().to_string(),
                                expected: "',' or 'end of string'",
                            });
                        }
                    }
                }
                Token::End => return Ok(requirements),
                other => {
                    return Err(SelectorError::UnexpectedToken {
                        found: other.literal().to_string(),
                        expected: "!, identifier, or 'end of string'",
                    });
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, unary) = self.parse_key_and_infer_operator()?;
        if let Some(operator) = unary {
            return Requirement::new(key, operator, Vec::new())
                .map_err(SelectorError::InvalidRequirement);
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(key, operator, values.into_iter().collect())
            .map_err(SelectorError::InvalidRequirement)
    }

    /// Reads `[!]key`. Returns the operator when it is already known: `!key`, or a bare
    /// `key` followed by `,` or the end. Note `!key=v` yields DoesNotExist here and then
    /// fails on the `=`, exactly as in Kubernetes.
    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(String, Option<Operator>), SelectorError> {
        let mut operator = None;
        let mut token = self.consume(Context::Values);
        if token == Token::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            token = self.consume(Context::Values);
        }
        let Token::Identifier(key) = token else {
            return Err(malformed(token, "identifier"));
        };
        let key_errs = is_qualified_name(key);
        if !key_errs.is_empty() {
            // Kubernetes validates the key here with a nil field path, hence "<nil>".
            let err = FieldError::invalid("<nil>", key, &key_errs.join("; "));
            return Err(SelectorError::InvalidRequirement(vec![err]));
        }
        if matches!(self.lookahead(Context::Values), Token::End | Token::Comma)
            && operator.is_none()
        {
            operator = Some(Operator::Exists);
        }
        Ok((key.to_string(), operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        match self.consume(Context::KeyAndOperator) {
            Token::In => Ok(Operator::In),
            Token::Equals => Ok(Operator::Equals),
            Token::DoubleEquals => Ok(Operator::DoubleEquals),
            Token::GreaterThan => Ok(Operator::GreaterThan),
            Token::LessThan => Ok(Operator::LessThan),
            Token::NotIn => Ok(Operator::NotIn),
            Token::NotEquals => Ok(Operator::NotEquals),
            other => Err(malformed(other, BINARY_OPERATORS)),
        }
    }

    /// Reads `(v1,v2,...)`. Empty entries are the empty string: `()` is `{""}`.
    fn parse_values(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let open = self.consume(Context::Values);
        if open != Token::OpenPar {
            return Err(malformed(open, "'('"));
        }
        match self.lookahead(Context::Values) {
            Token::Identifier(_) | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                let close = self.consume(Context::Values);
                if close != Token::ClosedPar {
                    return Err(malformed(close, "')'"));
                }
                Ok(values)
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            other => Err(malformed(other, "',', ')' or identifier")),
        }
    }

    /// Reads a comma-separated list up to (not including) `)`. Leading, doubled and
    /// trailing commas stand for the empty value.
    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut values = BTreeSet::new();
        loop {
            match self.consume(Context::Values) {
                Token::Identifier(v) => {
                    values.insert(v.to_string());
                    match self.lookahead(Context::Values) {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(values),
                        other => return Err(malformed(other, "',' or ')'")),
                    }
                }
                Token::Comma => {
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    match self.lookahead(Context::Values) {
                        Token::ClosedPar => {
                            values.insert(String::new());
                            return Ok(values);
                        }
                        // `,,`: the empty value between; the next pass reads the comma.
                        Token::Comma => {
                            values.insert(String::new());
                        }
                        _ => {}
                    }
                }
                other => return Err(malformed(other, "',', or identifier")),
            }
        }
    }

    /// Reads the value after `=`, `==`, `!=`, `>` or `<`; nothing there means "".
    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if matches!(self.lookahead(Context::Values), Token::End | Token::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.consume(Context::Values) {
            Token::Identifier(v) => Ok(BTreeSet::from([v.to_string()])),
            other => Err(malformed(other, "identifier")),
        }
    }
}

// ---- field selectors ----

/// The relation a field selector term asserts. `=` and `==` are the same to Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOp {
    Equals,
    NotEquals,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    op: FieldOp,
    value: String,
}

/// A parsed field selector: the AND of `field=value` / `field!=value` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the `fieldSelector` query syntax, as `fields.ParseSelector`. Field names
    /// are taken verbatim (no trimming, no validation); the server decides which it
    /// supports.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        // Kubernetes sorts the raw terms, which fixes the order of terms and errors.
        parts.sort_unstable();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, op, raw_value)) = split_term(part) else {
                return Err(SelectorError::MalformedFieldTerm {
                    selector: s.to_string(),
                    term: part.to_string(),
                });
            };
            let value = unescape_value(raw_value)?;
            // A term with neither field nor value (`=`) selects nothing; Kubernetes drops it.
            if field.is_empty() && value.is_empty() {
                continue;
            }
            terms.push(FieldTerm {
                field: field.to_string(),
                op,
                value,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// True if the selector has no terms and so matches everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Each term as (field, operator, unescaped value), for the server to check that
    /// every field is supported for the resource.
    pub fn requirements(&self) -> impl Iterator<Item = (&str, FieldOp, &str)> {
        self.terms
            .iter()
            .map(|t| (t.field.as_str(), t.op, t.value.as_str()))
    }

    /// Matches an object's JSON. A field path like `spec.nodeName` is looked up by its
    /// dots; a missing or null field reads as "", as Kubernetes' field sets do (an
    /// unscheduled pod has `spec.nodeName=""`). Booleans and numbers read as their JSON
    /// text (`spec.unschedulable=true`). Objects and arrays are not selectable values
    /// and also read as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|t| {
            let actual = field_value(object, &t.field);
            match t.op {
                FieldOp::Equals => actual.as_deref().unwrap_or("") == t.value,
                FieldOp::NotEquals => actual.as_deref().unwrap_or("") != t.value,
            }
        })
    }

    /// The value this selector forces `field` to equal, if any (e.g. an agent's
    /// `spec.nodeName=dev-1`), so a caller can use an index instead of a scan.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && t.op == FieldOp::Equals)
            .map(|t| t.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    /// Canonical form, `field=value` or `field!=value` joined by commas, values escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match t.op {
                FieldOp::Equals => "=",
                FieldOp::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", t.field, escape_value(&t.value))?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn field_value(object: &Value, path: &str) -> Option<String> {
    let mut current = object;
    for segment in path.split('.') {
        current = current.as_object()?.get(segment)?;
    }
    match current {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// Escapes a literal for use as a field selector value (`fields.EscapeValue`).
pub fn escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits on commas not preceded by a backslash; escapes stay in the terms.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at its first operator. The field part cannot be escaped, so the first
/// `!=`, `==` or `=` is the split point (`==` before `=` so no `=` is left on the value).
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let (field, rest) = term.split_at(i);
        if let Some(value) = rest.strip_prefix("!=") {
            return Some((field, FieldOp::NotEquals, value));
        }
        if let Some(value) = rest.strip_prefix("==") {
            return Some((field, FieldOp::Equals, value));
        }
        if let Some(value) = rest.strip_prefix('=') {
            return Some((field, FieldOp::Equals, value));
        }
    }
    None
}

/// `fields.UnescapeValue`: `\\`, `\,` and `\=` are the only escapes, and bare `,` or
/// `=` are errors.
fn unescape_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(SelectorError::InvalidEscapeSequence(format!("\\{c}")));
            }
            out.push(c);
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => return Err(SelectorError::UnescapedCharacter(c)),
            c => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::InvalidEscapeSequence("\\".to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} parsed as {sel}, expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn field_err(s: &str) -> SelectorError {
        match FieldSelector::parse(s) {
            Ok(sel) => panic!("{s:?} parsed as {sel}, expected an error"),
            Err(e) => e,
        }
    }

    fn expect_match(selector: &str, set: &[(&str, &str)]) {
        let sel = LabelSelector::parse(selector).unwrap();
        assert!(sel.matches(&labels(set)), "{selector} should match {set:?}");
    }

    fn expect_no_match(selector: &str, set: &[(&str, &str)]) {
        let sel = LabelSelector::parse(selector).unwrap();
        assert!(
            !sel.matches(&labels(set)),
            "{selector} should not match {set:?}"
        );
    }

    #[test]
    fn lexer_recognises_every_token() {
        let cases: &[(&str, Token<'_>)] = &[
            ("", Token::End),
            (",", Token::Comma),
            ("notin", Token::NotIn),
            ("in", Token::In),
            ("=", Token::Equals),
            ("==", Token::DoubleEquals),
            (">", Token::GreaterThan),
            ("<", Token::LessThan),
            ("!", Token::DoesNotExist),
            ("!=", Token::NotEquals),
            ("(", Token::OpenPar),
            (")", Token::ClosedPar),
            ("~", Token::Identifier("~")),
            ("||", Token::Identifier("||")),
        ];
        for (s, want) in cases {
            assert_eq!(lex(s)[0], *want, "lexing {s:?}");
        }
    }

    #[test]
    fn lexer_sequences_match_kubernetes() {
        use Token::*;
        let cases: &[(&str, &[Token<'_>])] = &[
            (
                "key in ( value )",
                &[
                    Identifier("key"),
                    In,
                    OpenPar,
                    Identifier("value"),
                    ClosedPar,
                    End,
                ],
            ),
            (
                "key notin ( value )",
                &[
                    Identifier("key"),
                    NotIn,
                    OpenPar,
                    Identifier("value"),
                    ClosedPar,
                    End,
                ],
            ),
            (
                "key in ( value1, value2 )",
                &[
                    Identifier("key"),
                    In,
                    OpenPar,
                    Identifier("value1"),
                    Comma,
                    Identifier("value2"),
                    ClosedPar,
                    End,
                ],
            ),
            ("!key", &[DoesNotExist, Identifier("key"), End]),
            (
                "x in (),y",
                &[
                    Identifier("x"),
                    In,
                    OpenPar,
                    ClosedPar,
                    Comma,
                    Identifier("y"),
                    End,
                ],
            ),
            (
                "== != (), = notin",
                &[
                    DoubleEquals,
                    NotEquals,
                    OpenPar,
                    ClosedPar,
                    Comma,
                    Equals,
                    NotIn,
                    End,
                ],
            ),
            (
                "key>2",
                &[Identifier("key"), GreaterThan, Identifier("2"), End],
            ),
            (
                "key<1",
                &[Identifier("key"), LessThan, Identifier("1"), End],
            ),
            (
                "a===b",
                &[Identifier("a"), DoubleEquals, Equals, Identifier("b"), End],
            ),
            (
                "a!==b",
                &[Identifier("a"), NotEquals, Equals, Identifier("b"), End],
            ),
            ("\r\n\tx \t", &[Identifier("x"), End]),
        ];
        for (s, want) in cases {
            assert_eq!(lex(s), *want, "lexing {s:?}");
        }
    }

    #[test]
    fn good_selectors_print_back_without_spaces() {
        for s in [
            "x=a,y=b,z=c",
            "",
            "x!=a,y=b",
            "x=",
            "x= ",
            "x=,z= ",
            "x= ,z= ",
            "!x",
            "x>1",
            "x>1,z<5",
            "x==a",
        ] {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(sel.to_string(), s.replace(' ', ""), "{s:?}");
        }
    }

    #[test]
    fn parse_is_deterministic_and_sorted_by_key() {
        let a = LabelSelector::parse("x=a,a=x").unwrap();
        let b = LabelSelector::parse("a=x,x=a").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=x,x=a");
        let sel = LabelSelector::parse("x notin (abc,,def),bar,z in (),w").unwrap();
        assert_eq!(sel.to_string(), "bar,w,x notin (,abc,def),z in ()");
    }

    #[test]
    fn whitespace_is_allowed_between_tokens() {
        let cases = [
            ("\rx", "x"),
            ("foo  in\t (abc)", "foo in (abc)"),
            ("x notin\n (abc)", "x notin (abc)"),
            ("x  notin\t\t(abc,def)", "x notin (abc,def)"),
            ("  app  =  web  ,  tier != db ", "app=web,tier!=db"),
            ("a ", "a"),
            (" ! a ", "!a"),
            ("x in ( a , b )", "x in (a,b)"),
        ];
        for (s, want) in cases {
            assert_eq!(LabelSelector::parse(s).unwrap().to_string(), want, "{s:?}");
        }
    }

    #[test]
    fn set_values_follow_kubernetes_comma_rules() {
        let values = |s: &str| {
            LabelSelector::parse(s).unwrap().requirements()[0]
                .values()
                .to_vec()
        };
        assert_eq!(values("x in (abc,def)"), ["abc", "def"]);
        assert_eq!(values("x in (def,abc)"), ["abc", "def"]);
        assert_eq!(values("x in (abc,)"), ["", "abc"]);
        assert_eq!(values("x in (abc,abc)"), ["abc"]);
        assert_eq!(values("x in ()"), [""]);
        assert_eq!(values("x notin ( )"), [""]);
        assert_eq!(values("x in (a,,)"), ["", "a"]);
        assert_eq!(values("x in (a,,,)"), ["", "a"]);
        assert_eq!(values("x in (a,,,,,,)"), ["", "a"]);
        assert_eq!(values("x in (a,,a,,a,,a,,)"), ["", "a"]);
        assert_eq!(values("x notin (, a)"), ["", "a"]);
        assert_eq!(values("x in (,)"), [""]);
        assert_eq!(
            values("a in (x,y,notin, z,in)"),
            ["in", "notin", "x", "y", "z"]
        );
        assert_eq!(values("x=,z="), [""]);
    }

    #[test]
    fn keywords_are_identifiers_outside_operator_position() {
        let sel = LabelSelector::parse("in in (in)").unwrap();
        assert_eq!(sel.requirements()[0].key(), "in");
        assert_eq!(sel.requirements()[0].operator(), Operator::In);
        assert_eq!(sel.to_string(), "in in (in)");
        expect_match("notin=in", &[("notin", "in")]);
        expect_match("notin notin (in)", &[("notin", "x")]);
        expect_match("in", &[("in", "")]);
    }

    #[test]
    fn prefixed_keys_parse() {
        let sel = LabelSelector::parse("this-is-a-dns.domain.com/key-with-dash").unwrap();
        assert_eq!(sel.requirements()[0].operator(), Operator::Exists);
        let sel =
            LabelSelector::parse("0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)").unwrap();
        assert_eq!(
            sel.to_string(),
            "0.1.2.domain/99 notin (10.10.100.1,tick.tack.clock)"
        );
        let sel = LabelSelector::parse("app.kubernetes.io/name=web").unwrap();
        assert_eq!(
            sel.requires_exact_match("app.kubernetes.io/name"),
            Some("web")
        );
    }

    #[test]
    fn every_operator_is_parsed() {
        let op = |s: &str| LabelSelector::parse(s).unwrap().requirements()[0].operator();
        assert_eq!(op("x in (a)"), Operator::In);
        assert_eq!(op("x notin (a)"), Operator::NotIn);
        assert_eq!(op("x=a"), Operator::Equals);
        assert_eq!(op("x==a"), Operator::DoubleEquals);
        assert_eq!(op("x!=a"), Operator::NotEquals);
        assert_eq!(op("x"), Operator::Exists);
        assert_eq!(op("!x"), Operator::DoesNotExist);
        assert_eq!(op("x>1"), Operator::GreaterThan);
        assert_eq!(op("x<1"), Operator::LessThan);
        assert_eq!(Operator::DoesNotExist.as_str(), "!");
        assert_eq!(Operator::GreaterThan.as_str(), "gt");
    }

    #[test]
    fn matching_follows_kubernetes() {
        expect_match("", &[("x", "y")]);
        expect_match("", &[]);
        expect_match("x=y", &[("x", "y")]);
        expect_match("x==y", &[("x", "y")]);
        expect_match("x=y,z=w", &[("x", "y"), ("z", "w")]);
        expect_match("x!=y,z!=w", &[("x", "z"), ("z", "a")]);
        expect_match("x!=y", &[]);
        expect_match("x", &[("x", "z")]);
        expect_match("x", &[("x", "")]);
        expect_match("!x", &[("y", "z")]);
        expect_match("x>1", &[("x", "2")]);
        expect_match("x<1", &[("x", "0")]);
        expect_match("x<1", &[("x", "-5")]);
        expect_match("x in (a,b)", &[("x", "b")]);
        expect_match("x notin (a,b)", &[("x", "c")]);
        expect_match("x notin (a,b)", &[]);
        expect_match("x in ()", &[("x", "")]);
        expect_match("x=", &[("x", "")]);
        expect_no_match("x=", &[]);
        expect_no_match("x=z", &[]);
        expect_no_match("x=y", &[("x", "z")]);
        expect_no_match("x=y,z=w", &[("x", "w"), ("z", "w")]);
        expect_no_match("x!=y,z!=w", &[("x", "z"), ("z", "w")]);
        expect_no_match("x", &[("y", "z")]);
        expect_no_match("!x", &[("x", "z")]);
        expect_no_match("x>1", &[("x", "0")]);
        expect_no_match("x>1", &[("x", "1")]);
        expect_no_match("x<1", &[("x", "2")]);
        expect_no_match("x>1", &[("x", "v2")]);
        expect_no_match("x>1", &[]);
        expect_no_match("x in (a,b)", &[("x", "c")]);
        expect_no_match("x in (a,b)", &[]);
        expect_no_match("x notin (a,b)", &[("x", "a")]);
        expect_no_match("x in ()", &[("x", "a")]);
        expect_no_match("x,y in (a)", &[("x", "1")]);

        let set = [("foo", "bar"), ("baz", "blah")];
        expect_match("foo=bar", &set);
        expect_match("baz=blah", &set);
        expect_match("foo=bar,baz=blah", &set);
        expect_no_match("foo=blah", &set);
        expect_no_match("baz=bar", &set);
        expect_no_match("foo=bar,foobar=bar,baz=blah", &set);
    }

    #[test]
    fn matches_value_reads_metadata_labels() {
        let sel = LabelSelector::parse("app=web,!canary").unwrap();
        assert!(sel.matches_value(&json!({"metadata": {"name": "a", "labels": {"app": "web"}}})));
        assert!(
            !sel.matches_value(&json!({"metadata": {"labels": {"app": "web", "canary": "true"}}}))
        );
        assert!(!sel.matches_value(&json!({"metadata": {"labels": {"app": "db"}}})));
        assert!(!sel.matches_value(&json!({"metadata": {"name": "a"}})));
        assert!(!sel.matches_value(&json!({"metadata": {"labels": {"app": 7}}})));
        let absent = LabelSelector::parse("!app,tier notin (db)").unwrap();
        assert!(absent.matches_value(&json!({"metadata": {"name": "a"}})));
        assert!(absent.matches_value(&json!({})));
        assert!(LabelSelector::everything().matches_value(&json!(null)));
    }

    #[test]
    fn empty_selectors_match_everything() {
        for s in ["", "   ", "\t\n"] {
            let sel = LabelSelector::parse(s).unwrap();
            assert!(sel.is_empty());
            assert!(sel.matches(&labels(&[("a", "b")])));
            assert_eq!(sel.to_string(), "");
        }
        assert!(!LabelSelector::parse("a").unwrap().is_empty());
        assert_eq!("x=a".parse::<LabelSelector>().unwrap().to_string(), "x=a");
    }

    #[test]
    fn syntax_errors_read_like_kubernetes() {
        assert_eq!(
            parse_err("x,,y"),
            "found ',', expected: identifier after ','"
        );
        assert_eq!(
            parse_err(",x,y"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            parse_err("a in (xyz),"),
            "found '', expected: identifier after ','"
        );
        assert_eq!(
            parse_err("a in (xyz)b notin ()"),
            "found 'b', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("x==a==b"),
            "found '==', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("!x=a"),
            "found '=', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("x=a b"),
            "found 'b', expected: ',' or 'end of string'"
        );
        assert_eq!(
            parse_err("(x)"),
            "found '(', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            parse_err("=a"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            parse_err("x nott in (y)"),
            "unable to parse requirement: found 'nott', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            parse_err("x!"),
            "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            parse_err("x ("),
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            parse_err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert_eq!(
            parse_err("!!x"),
            "unable to parse requirement: found '!', expected: identifier"
        );
        // `!in` is the key `in` after `!`: keywords are identifiers in key position.
        assert_eq!(LabelSelector::parse("!in").unwrap().to_string(), "!in");
        assert_eq!(
            parse_err("x in a"),
            "unable to parse requirement: found 'a', expected: '('"
        );
        assert_eq!(
            parse_err("x in"),
            "unable to parse requirement: found '', expected: '('"
        );
        assert_eq!(
            parse_err("x in (a"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            parse_err("x in (a b)"),
            "unable to parse requirement: found 'b', expected: ',' or ')'"
        );
        assert_eq!(
            parse_err("x in (=)"),
            "unable to parse requirement: found '=', expected: ',', ')' or identifier"
        );
        assert_eq!(
            parse_err("x in (a,=)"),
            "unable to parse requirement: found '=', expected: ',', or identifier"
        );
        assert_eq!(
            parse_err("x in (a,"),
            "unable to parse requirement: found '', expected: ',', or identifier"
        );
        assert_eq!(
            parse_err("x=(a)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            parse_err("x!=!"),
            "unable to parse requirement: found '!', expected: identifier"
        );
    }

    #[test]
    fn invalid_keys_and_values_are_reported_with_kubernetes_paths() {
        let key_shape = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        assert_eq!(
            parse_err("-x"),
            format!("unable to parse requirement: <nil>: Invalid value: \"-x\": {key_shape}")
        );
        assert_eq!(
            parse_err("x/-y=a"),
            format!("unable to parse requirement: <nil>: Invalid value: \"x/-y\": {key_shape}")
        );
        assert!(parse_err("a/b/c").starts_with("unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a valid label key must consist"));
        assert!(parse_err(&"a".repeat(64)).ends_with("name part must be no more than 63 bytes"));
        assert!(
            parse_err("Ünïcode")
                .starts_with("unable to parse requirement: <nil>: Invalid value: \"Ünïcode\"")
        );

        let value_shape = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
        assert_eq!(
            parse_err("x=a||y=b"),
            format!(
                "unable to parse requirement: values[0][x]: Invalid value: \"a||y\": {value_shape}"
            )
        );
        assert_eq!(
            parse_err("x in (a,-b)"),
            format!(
                "unable to parse requirement: values[0][x]: Invalid value: \"-b\": {value_shape}"
            )
        );
        assert_eq!(
            parse_err("x in (a,b/c)"),
            format!(
                "unable to parse requirement: values[1][x]: Invalid value: \"b/c\": {value_shape}"
            )
        );
        assert_eq!(
            parse_err(&format!("x={}", "a".repeat(64))),
            format!(
                "unable to parse requirement: values[0][x]: Invalid value: \"{}\": must be no more than 63 bytes",
                "a".repeat(64)
            )
        );
        assert_eq!(
            parse_err("x<a"),
            "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        assert_eq!(
            parse_err("x>"),
            "unable to parse requirement: values[0]: Invalid value: \"\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
        // Two errors are aggregated between brackets, as apimachinery does.
        assert_eq!(
            parse_err("x>-1"),
            format!(
                "unable to parse requirement: values[0][x]: Invalid value: \"-1\": {value_shape}"
            )
        );
        assert_eq!(
            parse_err("x>a.b-"),
            format!(
                "unable to parse requirement: [values[0]: Invalid value: \"a.b-\": for 'Gt', 'Lt' operators, the value must be an integer, values[0][x]: Invalid value: \"a.b-\": {value_shape}]"
            )
        );
        assert!(
            matches!(LabelSelector::parse("-x"), Err(SelectorError::InvalidRequirement(errs)) if errs.len() == 1 && errs[0].field == "<nil>")
        );
    }

    #[test]
    fn requires_exact_match_finds_single_values() {
        let sel = LabelSelector::parse("a=1,b==2,c in (3),d in (4,5),e!=6,f").unwrap();
        assert_eq!(sel.requires_exact_match("a"), Some("1"));
        assert_eq!(sel.requires_exact_match("b"), Some("2"));
        assert_eq!(sel.requires_exact_match("c"), Some("3"));
        assert_eq!(sel.requires_exact_match("d"), None);
        assert_eq!(sel.requires_exact_match("e"), None);
        assert_eq!(sel.requires_exact_match("f"), None);
        assert_eq!(sel.requires_exact_match("g"), None);
    }

    fn metav1_selector(
        match_labels: &[(&str, &str)],
        exprs: &[(&str, &str, Option<&[&str]>)],
    ) -> metav1::LabelSelector {
        metav1::LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!exprs.is_empty()).then(|| {
                exprs
                    .iter()
                    .map(|(key, operator, values)| metav1::LabelSelectorRequirement {
                        key: key.to_string(),
                        operator: operator.to_string(),
                        values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
                    })
                    .collect()
            }),
        }
    }

    #[test]
    fn from_label_selector_formats_like_format_label_selector() {
        let empty = LabelSelector::from_label_selector(&metav1::LabelSelector::default()).unwrap();
        assert!(empty.is_empty());
        assert!(empty.matches(&labels(&[("any", "thing")])));
        let empty_lists = metav1::LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        };
        assert!(
            LabelSelector::from_label_selector(&empty_lists)
                .unwrap()
                .is_empty()
        );

        let sel = metav1_selector(&[("app", "web")], &[("tier", "In", Some(&["b", "a"]))]);
        let sel = LabelSelector::from_label_selector(&sel).unwrap();
        assert_eq!(sel.to_string(), "app=web,tier in (a,b)");
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "c")])));

        let sel = metav1_selector(
            &[("z", "1"), ("a", "2")],
            &[
                ("m", "NotIn", Some(&["x"])),
                ("b", "Exists", None),
                ("c", "DoesNotExist", Some(&[])),
            ],
        );
        let sel = LabelSelector::from_label_selector(&sel).unwrap();
        assert_eq!(sel.to_string(), "a=2,b,!c,m notin (x),z=1");
        assert!(sel.matches(&labels(&[("a", "2"), ("b", ""), ("z", "1")])));
        assert!(!sel.matches(&labels(&[("a", "2"), ("b", ""), ("c", ""), ("z", "1")])));
    }

    #[test]
    fn from_label_selector_rejects_what_kubernetes_rejects() {
        let err = |ml: &[(&str, &str)], ex: &[(&str, &str, Option<&[&str]>)]| {
            LabelSelector::from_label_selector(&metav1_selector(ml, ex))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[], &[("a", "Gt", Some(&["1"]))]),
            "\"Gt\" is not a valid label selector operator"
        );
        assert_eq!(
            err(&[], &[("a", "in", Some(&["1"]))]),
            "\"in\" is not a valid label selector operator"
        );
        assert_eq!(
            err(&[], &[("a", "In", None)]),
            "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
        );
        assert_eq!(
            err(&[], &[("a", "NotIn", Some(&[]))]),
            "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
        );
        assert_eq!(
            err(&[], &[("a", "Exists", Some(&["x"]))]),
            "values: Invalid value: [\"x\"]: values set must be empty for exists and does not exist"
        );
        assert!(
            err(&[("-a", "x")], &[])
                .starts_with("key: Invalid value: \"-a\": name part must consist")
        );
        assert!(
            err(&[("a", "-x")], &[])
                .starts_with("values[0][a]: Invalid value: \"-x\": a valid label must be")
        );
        assert!(matches!(
            LabelSelector::from_label_selector(&metav1_selector(&[], &[("a", "In", None)])),
            Err(SelectorError::InvalidLabelSelector(_))
        ));
    }

    #[test]
    fn from_match_labels_requires_every_label() {
        let sel = LabelSelector::from_match_labels(&labels(&[("app", "web"), ("tier", "fe")]));
        assert_eq!(sel.to_string(), "app=web,tier=fe");
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe"), ("extra", "1")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(LabelSelector::from_match_labels(&BTreeMap::new()).is_empty());
    }

    // ---- field selectors ----

    fn reqs(sel: &FieldSelector) -> Vec<(String, FieldOp, String)> {
        sel.requirements()
            .map(|(f, o, v)| (f.to_string(), o, v.to_string()))
            .collect()
    }

    #[test]
    fn field_selector_parses_every_operator() {
        let sel =
            FieldSelector::parse("metadata.name=web,status.phase==Running,spec.nodeName!=dev-1")
                .unwrap();
        assert_eq!(
            reqs(&sel),
            vec![
                ("metadata.name".into(), FieldOp::Equals, "web".into()),
                ("spec.nodeName".into(), FieldOp::NotEquals, "dev-1".into()),
                ("status.phase".into(), FieldOp::Equals, "Running".into()),
            ]
        );
        // `==` prints as `=`, as Kubernetes' hasTerm does; terms come out sorted.
        assert_eq!(
            sel.to_string(),
            "metadata.name=web,spec.nodeName!=dev-1,status.phase=Running"
        );
        assert_eq!(
            reqs(&FieldSelector::parse("a!=").unwrap()),
            vec![("a".into(), FieldOp::NotEquals, "".into())]
        );
        assert_eq!(
            reqs(&FieldSelector::parse("a==").unwrap()),
            vec![("a".into(), FieldOp::Equals, "".into())]
        );
        // The first operator wins: the field part cannot be escaped.
        assert_eq!(
            reqs(&FieldSelector::parse("a!b=c").unwrap()),
            vec![("a!b".into(), FieldOp::Equals, "c".into())]
        );
        assert_eq!("x=y".parse::<FieldSelector>().unwrap().to_string(), "x=y");
    }

    #[test]
    fn field_selector_empty_and_no_op_terms() {
        for s in ["", ",", ",,", "=", "!=", "==", "=,!="] {
            let sel = FieldSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert!(sel.is_empty(), "{s:?}");
            assert!(sel.matches(&json!({"metadata": {"name": "x"}})));
        }
        let sel = FieldSelector::parse("=,a=b,").unwrap();
        assert_eq!(sel.to_string(), "a=b");
        // A value without a field is kept; the server reports the empty field as unsupported.
        assert_eq!(
            reqs(&FieldSelector::parse("=x").unwrap()),
            vec![("".into(), FieldOp::Equals, "x".into())]
        );
    }

    #[test]
    fn field_selector_takes_whitespace_verbatim_like_kubernetes() {
        let sel = FieldSelector::parse("metadata.name = web").unwrap();
        assert_eq!(
            reqs(&sel),
            vec![("metadata.name ".into(), FieldOp::Equals, " web".into())]
        );
    }

    #[test]
    fn field_selector_rejects_set_and_ordering_operators() {
        for s in [
            "metadata.name in (a,b)",
            "status.phase notin (Running)",
            "spec.replicas>1",
            "x<2",
            "metadata.name",
            "!metadata.name",
            "a=b,c",
        ] {
            assert!(
                matches!(field_err(s), SelectorError::MalformedFieldTerm { .. }),
                "{s:?}"
            );
        }
        assert_eq!(
            field_err("metadata.name in (a,b)").to_string(),
            "invalid selector: 'metadata.name in (a,b)'; can't understand 'b)'"
        );
        assert_eq!(
            field_err("status.phase notin (Running)").to_string(),
            "invalid selector: 'status.phase notin (Running)'; can't understand 'status.phase notin (Running)'"
        );
    }

    #[test]
    fn field_selector_escaping() {
        let value = |s: &str| reqs(&FieldSelector::parse(s).unwrap()).remove(0).2;
        assert_eq!(value(r"a=b\,c"), "b,c");
        assert_eq!(value(r"a=b\=c"), "b=c");
        assert_eq!(value(r"a=b\\c"), r"b\c");
        assert_eq!(value(r"a=\\\,\="), r"\,=");
        assert_eq!(value("a=héllo wörld"), "héllo wörld");
        // An escaped comma does not split terms.
        let sel = FieldSelector::parse(r"a=x\,y,b=z").unwrap();
        assert_eq!(reqs(&sel).len(), 2);
        // Escaping round-trips through Display.
        let tricky = FieldSelector::parse(r"metadata.name=a\\b\,c\=d").unwrap();
        assert_eq!(tricky.to_string(), r"metadata.name=a\\b\,c\=d");
        assert_eq!(FieldSelector::parse(&tricky.to_string()).unwrap(), tricky);
        assert_eq!(escape_value(r"a\b,c=d"), r"a\\b\,c\=d");
        assert_eq!(escape_value("plain"), "plain");
    }

    #[test]
    fn field_selector_escaping_errors() {
        assert_eq!(
            field_err(r"a=b\c"),
            SelectorError::InvalidEscapeSequence(r"\c".into())
        );
        assert_eq!(
            field_err(r"a=b\c").to_string(),
            r"invalid field selector: invalid escape sequence: \c"
        );
        assert_eq!(
            field_err(r"a=b\"),
            SelectorError::InvalidEscapeSequence(r"\".into())
        );
        assert_eq!(field_err("a=b=c"), SelectorError::UnescapedCharacter('='));
        assert_eq!(field_err("a===b"), SelectorError::UnescapedCharacter('='));
        assert_eq!(
            field_err("a=b=c").to_string(),
            "invalid field selector: unescaped character in value: '='"
        );
    }

    #[test]
    fn field_selector_matches_json_fields() {
        let scheduled = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "dev-1", "unschedulable": true, "replicas": 3},
            "status": {"phase": "Running"}
        });
        let pending = json!({"metadata": {"name": "web-2", "namespace": "default"}, "spec": {}, "status": {"phase": "Pending"}});
        let matches = |s: &str, obj: &Value| FieldSelector::parse(s).unwrap().matches(obj);

        assert!(matches("metadata.name=web-1", &scheduled));
        assert!(!matches("metadata.name=web-1", &pending));
        assert!(matches(
            "metadata.namespace=default,status.phase=Running",
            &scheduled
        ));
        assert!(!matches(
            "metadata.namespace=default,status.phase=Running",
            &pending
        ));
        assert!(matches("status.phase!=Running", &pending));
        // A missing field compares as "": unscheduled pods have spec.nodeName="".
        assert!(matches("spec.nodeName=", &pending));
        assert!(!matches("spec.nodeName=", &scheduled));
        assert!(matches("spec.nodeName!=", &scheduled));
        assert!(matches("spec.nodeName=dev-1", &scheduled));
        assert!(!matches("spec.nodeName=dev-1", &pending));
        assert!(matches("spec.nodeName!=dev-1", &pending));
        // Cluster-scoped objects have no namespace.
        assert!(matches(
            "metadata.namespace=",
            &json!({"metadata": {"name": "dev-1"}})
        ));
        // Scalars read as their JSON text, null and containers as "".
        assert!(matches("spec.unschedulable=true", &scheduled));
        assert!(matches("spec.replicas=3", &scheduled));
        assert!(matches(
            "spec.nodeName=",
            &json!({"spec": {"nodeName": null}})
        ));
        assert!(matches("spec=", &scheduled));
        assert!(matches("metadata.name.first=", &scheduled));
        assert!(FieldSelector::everything().matches(&json!(42)));
    }

    #[test]
    fn field_selector_requires_exact_match() {
        let sel = FieldSelector::parse("spec.nodeName=dev-1,status.phase!=Failed").unwrap();
        assert_eq!(sel.requires_exact_match("spec.nodeName"), Some("dev-1"));
        assert_eq!(sel.requires_exact_match("status.phase"), None);
        assert_eq!(sel.requires_exact_match("metadata.name"), None);
    }
}
