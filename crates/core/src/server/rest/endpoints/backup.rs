//! `/core/1.0/database/{backup,restore,verify}`: take a backup (an SQLite file), restore one into
//! this cluster, or prove that one restores. Trusted callers only; see [`crate::server::domain::backup`]
//! for what each does.

use crate::api::paths;
use crate::api::paths::BACKUP_SUMMARY_HEADER;
use crate::server::domain::backup::{self, MAX_BACKUP};
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::DATABASE_BACKUP).get(Action::new(take)),
        Endpoint::new(paths::DATABASE_RESTORE).post(Action::new(restore).max_body(MAX_BACKUP)),
        Endpoint::new(paths::DATABASE_VERIFY).post(Action::new(verify).max_body(MAX_BACKUP)),
    ]
}

/// The SQLite file itself, with its summary as JSON in a header.
async fn take(state: State, req: Request) -> HandlerResult {
    let taken = backup::take(&state, req.flag("verify")).await?;
    let summary = serde_json::to_string(&taken.summary)
        .map_err(|e| ApiError::internal(format!("encoding the backup summary: {e}")))?;
    Response::raw("application/vnd.sqlite3", taken.bytes).with_header(BACKUP_SUMMARY_HEADER, &ascii_json(&summary))
}

async fn restore(state: State, req: Request) -> HandlerResult {
    require_body(&req)?;
    Response::sync(backup::restore(&state, req.body.clone(), req.flag("replace")).await?)
}

async fn verify(state: State, req: Request) -> HandlerResult {
    require_body(&req)?;
    Response::sync(backup::verify(&state, req.body.clone()).await?)
}

fn require_body(req: &Request) -> Result<(), ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; a backup file (SQLite database) was expected"));
    }
    Ok(())
}

/// JSON with every non-ASCII character escaped, so that it is a valid header value.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_json_is_ascii_and_still_json() {
        let json = serde_json::to_string(&serde_json::json!({"name": "tâble 😀"})).unwrap();
        let escaped = super::ascii_json(&json);
        assert!(escaped.is_ascii());
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["name"], "tâble 😀");
    }
}
