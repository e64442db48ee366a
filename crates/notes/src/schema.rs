//! The service's tables, as schema updates applied once, cluster-wide, in order. A release
//! only ever appends updates: members running the older software keep working until every
//! member runs the newer one, which then applies the new updates.

use microcluster::SchemaUpdate;

pub(crate) fn updates() -> Vec<SchemaUpdate> {
    vec![
        SchemaUpdate::sql("CREATE TABLE notes (name TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL)"),
        // The second release records which member wrote each note.
        SchemaUpdate::sql("ALTER TABLE notes ADD COLUMN written_by TEXT NOT NULL DEFAULT ''"),
        // The third streams changes to watchers: every write appends one.
        SchemaUpdate::sql(
            "CREATE TABLE changes (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, kind TEXT NOT NULL)",
        ),
    ]
}
