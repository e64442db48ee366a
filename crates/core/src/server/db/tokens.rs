//! Queries on `core_token_records`.

use std::time::{Duration, SystemTime};

use dqlite::{Transaction, Value};

use super::{int, text};

/// How long an expired token is kept (unlisted) before the heartbeat deletes it, so that a join
/// attempted with it meanwhile is told that it expired rather than that none was issued.
pub(crate) const KEPT_AFTER_EXPIRY: Duration = Duration::from_secs(3600);

/// A token record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) secret: String,
    /// RFC 3339 in the cluster's time (see `server::clock`), or empty for "never".
    pub(crate) expiry: String,
}

impl TokenRow {
    /// Whether the token has expired by `now`, the cluster's time (an unreadable date counts as
    /// expired).
    pub(crate) fn is_expired(&self, now: SystemTime) -> bool {
        if self.expiry.is_empty() {
            return false;
        }
        humantime::parse_rfc3339_weak(&self.expiry).map_or(true, |t| t <= now)
    }
}

/// Every token, expired or not.
pub(crate) async fn list(tx: &mut Transaction<'_>) -> dqlite::Result<Vec<TokenRow>> {
    let rows = tx.query("SELECT id, name, secret, expiry_date FROM core_token_records ORDER BY name", &[]).await?;
    Ok(rows
        .rows
        .iter()
        .map(|r| TokenRow { id: int(r.get(0)), name: text(r.get(1)), secret: text(r.get(2)), expiry: text(r.get(3)) })
        .collect())
}

/// Records a token.
pub(crate) async fn insert(
    tx: &mut Transaction<'_>,
    name: &str,
    secret: &str,
    expiry: Option<&str>,
) -> dqlite::Result<()> {
    tx.exec(
        "INSERT INTO core_token_records (name, secret, expiry_date) VALUES (?, ?, ?)",
        &[name.into(), secret.into(), expiry.map_or(Value::Null, Value::from)],
    )
    .await
    .map(drop)
}

/// Deletes a token by name; returns whether it existed.
pub(crate) async fn delete(tx: &mut Transaction<'_>, name: &str) -> dqlite::Result<bool> {
    Ok(tx.exec("DELETE FROM core_token_records WHERE name = ?", &[name.into()]).await?.rows_affected > 0)
}

/// Deletes the tokens that had expired by `before` (the cluster's time); returns how many.
pub(crate) async fn delete_expired(tx: &mut Transaction<'_>, before: SystemTime) -> dqlite::Result<usize> {
    let mut deleted = 0;
    for token in list(tx).await?.into_iter().filter(|t| t.is_expired(before)) {
        tx.exec("DELETE FROM core_token_records WHERE id = ?", &[Value::Integer(token.id)]).await?;
        deleted += 1;
    }
    Ok(deleted)
}
