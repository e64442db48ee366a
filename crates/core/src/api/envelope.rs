//! microcluster's (and LXD's) JSON response envelope: every answer, success or error, has the
//! same shape, and the HTTP status equals `error_code` for errors.

use serde::{Deserialize, Serialize};

/// Whether a response carries a result or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseType {
    /// A synchronous result.
    Sync,
    /// An error.
    Error,
}

/// The response envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T = serde_json::Value> {
    /// `sync` or `error`.
    #[serde(rename = "type")]
    pub kind: ResponseType,
    /// `Success` for results, empty for errors.
    #[serde(default)]
    pub status: String,
    /// 200 for results, 0 for errors.
    #[serde(default)]
    pub status_code: u16,
    /// Always empty (no asynchronous operations).
    #[serde(default)]
    pub operation: String,
    /// HTTP status of an error, 0 for results.
    #[serde(default)]
    pub error_code: u16,
    /// Error message, empty for results.
    #[serde(default)]
    pub error: String,
    /// The result (`{}` for an empty result, `null` for errors).
    pub metadata: T,
}

impl<T> Envelope<T> {
    /// A successful result.
    pub fn sync(metadata: T) -> Self {
        Envelope {
            kind: ResponseType::Sync,
            status: "Success".into(),
            status_code: 200,
            operation: String::new(),
            error_code: 0,
            error: String::new(),
            metadata,
        }
    }
}

impl Envelope<serde_json::Value> {
    /// An error with its HTTP status.
    pub fn error(code: u16, message: impl Into<String>) -> Self {
        Envelope {
            kind: ResponseType::Error,
            status: String::new(),
            status_code: 0,
            operation: String::new(),
            error_code: code,
            error: message.into(),
            metadata: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_have_microclusters_shape() {
        let ok = serde_json::to_value(Envelope::sync(serde_json::json!({}))).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"type": "sync", "status": "Success", "status_code": 200,
                "operation": "", "error_code": 0, "error": "", "metadata": {}})
        );
        let err = serde_json::to_value(Envelope::error(404, "not found")).unwrap();
        assert_eq!(err["type"], "error");
        assert_eq!(err["error_code"], 404);
        assert_eq!(err["metadata"], serde_json::Value::Null);
    }
}
