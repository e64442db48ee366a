//! What a write and a point read look like on each side's HTTP API, and what counts as a
//! success. dqlite-demo answers every request with 200 and puts failures in the body
//! (`Error: database is locked`), so its answers are judged by their body.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::http::Req;

/// The value every write stores (100 bytes, as in dqlite-demo's examples).
pub(crate) const VALUE: &str =
    "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

/// A side's HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `POST /core/internal/sql` on a member's control socket.
    Ours,
    /// The same, with weak reads (`"consistency": "weak"`: no confirmation with the voters).
    OursWeak,
    /// The `kv` example: `PUT|GET /KEY` on its plain HTTP listener.
    Kv,
    /// dqlite-demo: `PUT|GET /KEY`.
    Demo,
    /// etcd's HTTP/JSON gateway: `POST /v3/kv/put`, `POST /v3/kv/range`.
    Etcd,
}

fn sql(query: String) -> Bytes {
    serde_json::json!({ "query": query }).to_string().into()
}

fn weak_sql(query: String) -> Bytes {
    serde_json::json!({ "query": query, "consistency": "weak" }).to_string().into()
}

fn etcd_body(fields: &[(&str, &str)]) -> Bytes {
    let object: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| ((*k).to_owned(), BASE64.encode(v).into())).collect();
    serde_json::Value::Object(object).to_string().into()
}

impl Api {
    /// Stores [`VALUE`] under `key`.
    pub(crate) fn write(self, key: &str) -> Req {
        match self {
            Api::Ours | Api::OursWeak => Req::new(
                "POST",
                "/core/internal/sql",
                sql(format!("INSERT OR REPLACE INTO extended_table (key, value) VALUES ('{key}', '{VALUE}')")),
            ),
            Api::Kv | Api::Demo => Req::new("PUT", format!("/{key}"), VALUE),
            Api::Etcd => Req::new("POST", "/v3/kv/put", etcd_body(&[("key", key), ("value", VALUE)])),
        }
    }

    /// Reads the value of `key`.
    pub(crate) fn read(self, key: &str) -> Req {
        match self {
            Api::Ours => Req::new(
                "POST",
                "/core/internal/sql",
                sql(format!("SELECT value FROM extended_table WHERE key = '{key}'")),
            ),
            Api::OursWeak => Req::new(
                "POST",
                "/core/internal/sql",
                weak_sql(format!("SELECT value FROM extended_table WHERE key = '{key}'")),
            ),
            Api::Kv | Api::Demo => Req::new("GET", format!("/{key}"), Bytes::new()),
            Api::Etcd => Req::new("POST", "/v3/kv/range", etcd_body(&[("key", key)])),
        }
    }

    /// Whether an answer to [`Api::write`] says the write was applied.
    pub(crate) fn write_ok(self, status: u16, body: &[u8]) -> bool {
        match self {
            Api::Demo => status == 200 && body.starts_with(b"done"),
            _ => status == 200,
        }
    }

    /// Whether an answer to [`Api::read`] carries the value.
    pub(crate) fn read_ok(self, status: u16, body: &[u8]) -> bool {
        let has_value = match self {
            // Base64 of the value: "dnZ2" repeated.
            Api::Etcd => body.windows(8).any(|w| w == b"dnZ2dnZ2"),
            _ => body.windows(8).any(|w| w == b"vvvvvvvv"),
        };
        status == 200 && has_value && !body.starts_with(b"Error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_errors_are_failures() {
        assert!(Api::Demo.write_ok(200, b"done\n"));
        assert!(!Api::Demo.write_ok(200, b"Error: database is locked\n"));
        assert!(!Api::Demo.read_ok(200, b"Error: sql: no rows in result set\n"));
        assert!(Api::Etcd.read_ok(200, format!("{{\"kvs\":[{{\"value\":\"{}\"}}]}}", BASE64.encode(VALUE)).as_bytes()));
        assert!(!Api::Etcd.read_ok(200, b"{\"header\":{}}"));
    }
}
