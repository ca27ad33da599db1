//! Tests of the reply parsing and encoding helpers.

use std::time::Duration;

use redis::Value;

use super::delivery::timings_json;
use super::health::group_pending;
use super::GROUP;

#[test]
fn pending_from_xinfo_groups() {
    let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let v = Value::Array(vec![
        Value::Array(vec![
            bulk("name"),
            bulk("other"),
            bulk("pending"),
            Value::Int(9),
        ]),
        Value::Array(vec![
            bulk("name"),
            bulk(GROUP),
            bulk("consumers"),
            Value::Int(2),
            bulk("pending"),
            Value::Int(3),
        ]),
    ]);
    assert_eq!(group_pending(&v), Some(3));
    assert_eq!(group_pending(&Value::Nil), None);
    assert_eq!(
        timings_json(&[("fit".into(), Duration::from_millis(1500))]),
        r#"[["fit",1.5]]"#
    );
}
