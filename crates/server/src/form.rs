//! Reading a request's form fields: `application/x-www-form-urlencoded`
//! (also assumed when there is no Content-Type), `multipart/form-data`, or a
//! JSON object. Values stay bytes until a field is asked for, so invalid
//! UTF-8 is reported as such rather than silently replaced.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::ApiError;

pub(crate) struct Form {
    fields: Vec<(String, Vec<u8>)>,
}

impl Form {
    /// The first value of a field, as text.
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.fields.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => String::from_utf8(v.clone())
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("form field '{name}' is not valid UTF-8"))),
        }
    }

    #[cfg(test)]
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the request body is over {limit} bytes"))
}

pub(crate) async fn read_form(headers: &HeaderMap, body: Body, limit: usize) -> Result<Form, ApiError> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large(limit));
        }
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(limit)),
        Err(e) => return Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    };
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("").to_string());
    let mime = content_type.as_deref().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let fields = match mime.as_str() {
        "" | "application/x-www-form-urlencoded" => parse_urlencoded(&bytes),
        "multipart/form-data" => parse_multipart(content_type.as_deref().unwrap_or(""), bytes).await?,
        "application/json" => parse_json(&bytes)?,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "unsupported Content-Type '{other}': send multipart/form-data, \
                     application/x-www-form-urlencoded or application/json"
                ),
            ))
        }
    };
    Ok(Form { fields })
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
            b'%' if i + 2 < s.len() => {
                match (hex(s[i + 1]), hex(s[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn parse_urlencoded(body: &[u8]) -> Vec<(String, Vec<u8>)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (String::from_utf8_lossy(&percent_decode(k)).into_owned(), percent_decode(v))
        })
        .collect()
}

async fn parse_multipart(content_type: &str, bytes: axum::body::Bytes) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("bad multipart Content-Type: {e}")))?;
    let mut multipart = multer::Multipart::new(Body::from(bytes).into_data_stream(), boundary);
    let mut fields = Vec::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_string();
                let value = field.bytes().await.map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
                fields.push((name, value.to_vec()));
            }
            Ok(None) => return Ok(fields),
            Err(e) => return Err(ApiError::bad_request(format!("bad multipart body: {e}"))),
        }
    }
}

fn parse_json(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(if e.is_syntax() && std::str::from_utf8(bytes).is_err() {
            "the JSON body is not valid UTF-8".to_string()
        } else {
            format!("bad JSON body: {e}")
        })
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::bad_request("the JSON body must be an object of fields"));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s.into_bytes())),
            serde_json::Value::Number(n) => Some((k, n.to_string().into_bytes())),
            serde_json::Value::Bool(b) => Some((k, b.to_string().into_bytes())),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_decodes_plus_percent_and_keeps_raw_bytes() {
        let f = Form { fields: parse_urlencoded(b"prompt=a+red%20chair&seed=7&bad=%ff%fe&x=100%&y=%4") };
        assert_eq!(f.get("prompt"), Some(&b"a red chair"[..]));
        assert_eq!(f.text("seed").unwrap().as_deref(), Some("7"));
        assert_eq!(f.get("bad"), Some(&[0xff, 0xfe][..]));
        assert!(f.text("bad").is_err());
        assert_eq!(f.get("x"), Some(&b"100%"[..]));
        assert_eq!(f.get("y"), Some(&b"%4"[..]));
        assert_eq!(f.text("missing").unwrap(), None);
    }
}
