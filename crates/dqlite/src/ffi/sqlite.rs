//! Direct use of the process's SQLite on ordinary database files (backups), outside dqlite: a
//! connection that closes itself and a statement that finalises itself. Private to the crate;
//! [`crate::file`] puts the safe API on top.

use std::ffi::{CStr, CString, c_int};
use std::ptr::NonNull;

use dqlite_sys as sys;

use crate::proto::Value;

/// A failed SQLite call: its code and SQLite's message.
#[derive(Debug)]
pub(crate) struct SqliteFailure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

/// An open SQLite connection, closed on drop.
#[derive(Debug)]
pub(crate) struct RawSqlite {
    ptr: NonNull<sys::sqlite3>,
}

// SAFETY: SQLite runs in multi-thread mode at least (`configure_sqlite`; Debian builds it
// serialized), where a connection may move between threads as long as one thread at a time
// uses it, which `&mut self` on every call ensures.
unsafe impl Send for RawSqlite {}

impl RawSqlite {
    pub(crate) fn open(path: &CStr, read_only: bool) -> Result<RawSqlite, SqliteFailure> {
        let flags =
            if read_only { sys::SQLITE_OPEN_READONLY } else { sys::SQLITE_OPEN_READWRITE | sys::SQLITE_OPEN_CREATE };
        crate::ffi::configure_sqlite();
        let mut ptr = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; a NULL vfs selects the default (unix) VFS,
        // never libdqlite's.
        let rc = unsafe { sys::sqlite3_open_v2(path.as_ptr(), &mut ptr, flags, std::ptr::null()) };
        let Some(ptr) = NonNull::new(ptr) else {
            return Err(SqliteFailure { code: rc, message: "out of memory opening the database".into() });
        };
        let conn = RawSqlite { ptr };
        if rc != sys::SQLITE_OK {
            return Err(conn.fail(rc));
        }
        Ok(conn)
    }

    fn fail(&self, code: c_int) -> SqliteFailure {
        // SAFETY: valid connection; errmsg returns a NUL-terminated string owned by it.
        let msg = unsafe { sys::sqlite3_errmsg(self.ptr.as_ptr()) };
        let message = if msg.is_null() {
            String::new()
        } else {
            // SAFETY: as above; copied out at once.
            unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
        };
        SqliteFailure { code, message }
    }

    /// Prepares the first statement of `sql`.
    pub(crate) fn prepare(&mut self, sql: &str) -> Result<RawStatement<'_>, SqliteFailure> {
        let text = CString::new(sql).map_err(|_| SqliteFailure { code: 1, message: "NUL byte in SQL".into() })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: valid connection, NUL-terminated text (-1: read to the NUL), valid out-pointer;
        // the tail is not wanted.
        let rc =
            unsafe { sys::sqlite3_prepare_v2(self.ptr.as_ptr(), text.as_ptr(), -1, &mut stmt, std::ptr::null_mut()) };
        if rc != sys::SQLITE_OK {
            return Err(self.fail(rc));
        }
        match NonNull::new(stmt) {
            Some(ptr) => Ok(RawStatement { ptr, conn: self }),
            None => Err(SqliteFailure { code: 1, message: "the SQL text holds no statement".into() }),
        }
    }
}

impl Drop for RawSqlite {
    fn drop(&mut self) {
        // SAFETY: valid connection, unused afterwards; statements borrow the connection, so
        // none is left unfinalised.
        unsafe { sys::sqlite3_close_v2(self.ptr.as_ptr()) };
    }
}

/// A prepared statement, finalised on drop.
#[derive(Debug)]
pub(crate) struct RawStatement<'c> {
    ptr: NonNull<sys::sqlite3_stmt>,
    conn: &'c RawSqlite,
}

impl RawStatement<'_> {
    pub(crate) fn column_names(&self) -> Vec<String> {
        // SAFETY: valid statement.
        let n = unsafe { sys::sqlite3_column_count(self.ptr.as_ptr()) };
        (0..n)
            .map(|i| {
                // SAFETY: valid statement and index; the name is NUL-terminated and owned by it.
                let name = unsafe { sys::sqlite3_column_name(self.ptr.as_ptr(), i) };
                if name.is_null() {
                    String::new()
                } else {
                    // SAFETY: as above; copied out at once.
                    unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
                }
            })
            .collect()
    }

    /// Steps once: `Ok(Some(values))` for a row, `Ok(None)` when done.
    pub(crate) fn step(&mut self) -> Result<Option<Vec<Value>>, SqliteFailure> {
        // SAFETY: valid statement.
        let rc = unsafe { sys::sqlite3_step(self.ptr.as_ptr()) };
        match rc {
            sys::SQLITE_ROW => Ok(Some(self.row())),
            sys::SQLITE_DONE => Ok(None),
            _ => Err(self.conn.fail(rc)),
        }
    }

    fn row(&self) -> Vec<Value> {
        let stmt = self.ptr.as_ptr();
        // SAFETY: valid statement positioned on a row.
        let n = unsafe { sys::sqlite3_column_count(stmt) };
        (0..n)
            .map(|i| {
                // SAFETY (all calls below): valid statement on a row and an index below the column
                // count. Text and blob pointers stay valid until the next step; they are copied at
                // once, with the length SQLite reports for them.
                unsafe {
                    match sys::sqlite3_column_type(stmt, i) {
                        sys::SQLITE_INTEGER => Value::Integer(sys::sqlite3_column_int64(stmt, i)),
                        sys::SQLITE_FLOAT => Value::Float(sys::sqlite3_column_double(stmt, i)),
                        sys::SQLITE_TEXT => {
                            let p = sys::sqlite3_column_text(stmt, i);
                            let len = usize::try_from(sys::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                            let bytes = if p.is_null() { &[][..] } else { std::slice::from_raw_parts(p, len) };
                            Value::Text(String::from_utf8_lossy(bytes).into_owned())
                        }
                        sys::SQLITE_BLOB => {
                            let p = sys::sqlite3_column_blob(stmt, i).cast::<u8>();
                            let len = usize::try_from(sys::sqlite3_column_bytes(stmt, i)).unwrap_or(0);
                            Value::Blob(if p.is_null() {
                                Vec::new()
                            } else {
                                std::slice::from_raw_parts(p, len).to_vec()
                            })
                        }
                        _ => Value::Null,
                    }
                }
            })
            .collect()
    }
}

impl Drop for RawStatement<'_> {
    fn drop(&mut self) {
        // SAFETY: valid statement, unused afterwards.
        unsafe { sys::sqlite3_finalize(self.ptr.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::RawSqlite;

    #[test]
    fn connections_run_without_a_mutex_of_their_own() {
        let conn = RawSqlite::open(c":memory:", false).expect("open an in-memory database");
        // SAFETY: valid connection.
        let mutex = unsafe { dqlite_sys::sqlite3_db_mutex(conn.ptr.as_ptr()) };
        assert!(mutex.is_null(), "SQLite still runs serialized: configure_sqlite did not take effect");
    }
}
