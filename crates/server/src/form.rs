//! Reading a request's fields from its body: `multipart/form-data`,
//! `application/x-www-form-urlencoded` or a JSON object, by Content-Type (a
//! body without one is refused: guessing its encoding could misread it).
//!
//! The same rules hold for every encoding and every endpoint:
//! - a field the endpoint reads may be given once; twice is an error (JSON
//!   included, where a parser would silently keep the last);
//! - fields the endpoint does not read are ignored;
//! - text fields are JSON strings in a JSON body; numeric fields are JSON
//!   integers or strings of digits (as a form sends them); `null` is the
//!   same as leaving the field out;
//! - values stay bytes until a field is asked for, so that invalid UTF-8 is
//!   reported as such rather than silently replaced.
//!
//! The body's size limit is tower-http's `RequestBodyLimitLayer` (see the
//! router); the body must arrive within the body timeout.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::ApiError;

/// One field's value as the body gave it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// A form value or a JSON string: bytes, checked for UTF-8 when read.
    Text(Vec<u8>),
    /// A JSON number, as written.
    Number(String),
    /// A JSON `null`.
    Null,
    /// Any other JSON value, by its kind (`a boolean`, `an array`, …).
    Other(&'static str),
}

pub(crate) struct Form {
    fields: Vec<(String, Value)>,
}

impl Form {
    /// The field's only value, `None` when absent; an error when given twice.
    /// (The callers read a `null` as absent.)
    fn value(&self, name: &str) -> Result<Option<&Value>, ApiError> {
        let mut values = self
            .fields
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v);
        let first = values.next();
        let more = values.count();
        if more > 0 {
            return Err(ApiError::bad_request(format!(
                "field '{name}' is given {} times; give it once",
                more + 1
            )));
        }
        Ok(first)
    }

    /// A text field: a form value or a JSON string.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.value(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Text(bytes)) => utf8(name, bytes).map(Some),
            Some(Value::Number(_)) => Err(not_a(name, "a string", "a number")),
            Some(Value::Other(kind)) => Err(not_a(name, "a string", kind)),
        }
    }

    /// A field's raw bytes (a multipart file or form value; a JSON string's UTF-8).
    pub fn bytes(&self, name: &str) -> Result<Option<&[u8]>, ApiError> {
        match self.value(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Text(bytes)) => Ok(Some(bytes)),
            Some(Value::Number(_)) => Err(not_a(name, "a file or string", "a number")),
            Some(Value::Other(kind)) => Err(not_a(name, "a file or string", kind)),
        }
    }

    /// A numeric field as text (parsed by the caller): a form value, a JSON
    /// number or a JSON string.
    pub fn number(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.value(name)? {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Text(bytes)) => utf8(name, bytes).map(Some),
            Some(Value::Number(n)) => Ok(Some(n.clone())),
            Some(Value::Other(kind)) => Err(not_a(name, "an integer", kind)),
        }
    }
}

fn utf8(name: &str, bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request(format!("field '{name}' is not valid UTF-8")))
}

fn not_a(name: &str, expected: &str, got: &str) -> ApiError {
    ApiError::bad_request(format!("field '{name}' must be {expected}, got {got}"))
}

pub(crate) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over {limit} bytes"),
    )
}

/// The first error of type `E` in `e`'s chain of sources.
fn find_source<'a, E: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut current = Some(e);
    while let Some(c) = current {
        if let Some(found) = c.downcast_ref::<E>() {
            return Some(found);
        }
        current = c.source();
    }
    None
}

/// What a failed body read means: over the limit, or the client went away
/// before the body ended (`upload_aborted`), or a malformed body.
fn body_error(limit: usize, e: &axum::Error) -> ApiError {
    if find_source::<LengthLimitError>(e).is_some() {
        return too_large(limit);
    }
    let gone = find_source::<hyper::Error>(e)
        .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
        || find_source::<std::io::Error>(e).is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            )
        });
    if gone {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "upload_aborted",
            "the client closed the connection before the body ended",
        )
    } else {
        ApiError::bad_request(format!("could not read the request body: {e}"))
    }
}

/// Reads the whole body (within `timeout`, counted from now) and its fields.
/// `limit` is the body limit the router enforces, for the error message.
pub(crate) async fn read_form(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Form, ApiError> {
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => return Err(unsupported("no Content-Type")),
        Some(v) => v
            .to_str()
            .map_err(|_| unsupported("a Content-Type that is not ASCII"))?
            .to_string(),
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !matches!(
        mime.as_str(),
        "application/x-www-form-urlencoded" | "multipart/form-data" | "application/json"
    ) {
        return Err(unsupported(&format!("Content-Type '{mime}'")));
    }
    let bytes = match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e)) => return Err(body_error(limit, &e)),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let fields = match mime.as_str() {
        "application/x-www-form-urlencoded" => parse_urlencoded(&bytes),
        "multipart/form-data" => parse_multipart(&content_type, bytes).await?,
        _ => parse_json(&bytes)?,
    };
    Ok(Form { fields })
}

fn unsupported(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "unsupported body: {what}; send multipart/form-data, application/x-www-form-urlencoded or application/json"
        ),
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `+` is a space and `%XY` a byte; a `%` not followed by two hex digits is
/// kept as is (as browsers and Python do).
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn parse_urlencoded(body: &[u8]) -> Vec<(String, Value)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                Value::Text(percent_decode(v)),
            )
        })
        .collect()
}

async fn parse_multipart(
    content_type: &str,
    bytes: axum::body::Bytes,
) -> Result<Vec<(String, Value)>, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("bad multipart Content-Type: {e}")))?;
    let mut multipart = multer::Multipart::new(Body::from(bytes).into_data_stream(), boundary);
    let mut fields = Vec::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_string();
                let value = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
                fields.push((name, Value::Text(value.to_vec())));
            }
            Ok(None) => return Ok(fields),
            Err(e) => return Err(ApiError::bad_request(format!("bad multipart body: {e}"))),
        }
    }
}

/// A JSON object's members in order, duplicates kept (serde_json's own map
/// would keep only the last).
struct JsonMembers(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for JsonMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = JsonMembers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(JsonMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn parse_json(bytes: &[u8]) -> Result<Vec<(String, Value)>, ApiError> {
    let JsonMembers(members) = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(if e.is_syntax() && std::str::from_utf8(bytes).is_err() {
            "the JSON body is not valid UTF-8".to_string()
        } else {
            format!("bad JSON body: {e}")
        })
    })?;
    Ok(members
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => Value::Text(s.into_bytes()),
                serde_json::Value::Number(n) => Value::Number(n.to_string()),
                serde_json::Value::Null => Value::Null,
                serde_json::Value::Bool(_) => Value::Other("a boolean"),
                serde_json::Value::Array(_) => Value::Other("an array"),
                serde_json::Value::Object(_) => Value::Other("an object"),
            };
            (k, value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(f: &Form, name: &str) -> Option<Value> {
        f.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn urlencoded_decodes_plus_percent_and_keeps_raw_bytes() {
        let f = Form {
            fields: parse_urlencoded(b"prompt=a+red%20chair&seed=7&bad=%ff%fe&x=100%&y=%4"),
        };
        assert_eq!(
            text_of(&f, "prompt"),
            Some(Value::Text(b"a red chair".to_vec()))
        );
        assert_eq!(f.number("seed").unwrap().as_deref(), Some("7"));
        assert_eq!(text_of(&f, "bad"), Some(Value::Text(vec![0xff, 0xfe])));
        assert!(f.text("bad").is_err());
        assert_eq!(f.text("x").unwrap().as_deref(), Some("100%"));
        assert_eq!(f.text("y").unwrap().as_deref(), Some("%4"));
        assert_eq!(f.text("missing").unwrap(), None);
    }

    #[test]
    fn json_fields_are_typed_and_duplicates_are_refused_in_every_encoding() {
        let f = Form {
            fields: parse_json(
                br#"{"prompt": 5, "seed": 7, "frames": "3", "video_res": true, "x": null}"#,
            )
            .unwrap(),
        };
        assert!(f
            .text("prompt")
            .unwrap_err()
            .message
            .contains("must be a string, got a number"));
        assert_eq!(f.number("seed").unwrap().as_deref(), Some("7"));
        assert_eq!(f.number("frames").unwrap().as_deref(), Some("3"));
        assert!(f
            .number("video_res")
            .unwrap_err()
            .message
            .contains("must be an integer, got a boolean"));
        assert_eq!(f.text("x").unwrap(), None, "null is an absent field");
        for fields in [
            parse_json(br#"{"prompt": "a", "prompt": "b"}"#).unwrap(),
            parse_urlencoded(b"prompt=a&prompt=b"),
        ] {
            let e = Form { fields }.text("prompt").unwrap_err();
            assert!(e.message.contains("given 2 times"), "{}", e.message);
        }
        let unread_duplicates = Form {
            fields: parse_urlencoded(b"prompt=a&extra=1&extra=2"),
        };
        assert_eq!(
            unread_duplicates.text("prompt").unwrap().as_deref(),
            Some("a")
        );
    }
}
