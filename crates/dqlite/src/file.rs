//! Databases as ordinary SQLite files, outside dqlite: a node's DUMP (main file and WAL) turned
//! into one self-contained file that `sqlite3` can open, and such files read row by row.
//!
//! This is how backups leave a cluster and come back: [`write_dump`] makes the file, and
//! [`SqliteFile`] reads it (streaming rows, so a large table does not have to fit in memory).
//! These calls block; call them from `spawn_blocking` in async code.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::ffi::sqlite::{RawSqlite, SqliteFailure};
use crate::proto::{File, Value};

/// A failure reading or writing an SQLite file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused (not a database, corrupt, SQL error).
    #[error("{}: {message} (SQLite error {code})", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's result code.
        code: i32,
        /// SQLite's message.
        message: String,
    },
    /// A DUMP without the database's main file.
    #[error("the dump holds no file named {name:?} (it holds: {found})")]
    MissingFile {
        /// The database name asked for.
        name: String,
        /// The names it holds.
        found: String,
    },
}

/// An ordinary SQLite database file, opened directly (not through dqlite, not replicated).
#[derive(Debug)]
pub struct SqliteFile {
    raw: RawSqlite,
    path: PathBuf,
}

impl SqliteFile {
    /// Opens an existing file for reading only.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<SqliteFile, FileError> {
        SqliteFile::open(path.as_ref(), true)
    }

    fn open(path: &Path, read_only: bool) -> Result<SqliteFile, FileError> {
        if read_only && !path.is_file() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
            return Err(FileError::Io { path: path.to_owned(), source });
        }
        let text = c_path(path)?;
        let raw = RawSqlite::open(&text, read_only).map_err(|f| sqlite(path, f))?;
        Ok(SqliteFile { raw, path: path.to_owned() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the first statement of `sql` to its end, discarding any rows.
    pub fn execute(&mut self, sql: &str) -> Result<(), FileError> {
        self.for_each_row(sql, |_| Ok::<(), FileError>(())).map(|_| ())
    }

    /// Runs the first statement of `sql`, giving `f` each row as it is read; returns the
    /// column names. Stops at the first error, `f`'s or SQLite's.
    pub fn for_each_row<E: From<FileError>>(
        &mut self,
        sql: &str,
        mut f: impl FnMut(Vec<Value>) -> Result<(), E>,
    ) -> Result<Vec<String>, E> {
        let path = self.path.clone();
        let mut stmt = self.raw.prepare(sql).map_err(|e| E::from(sqlite(&path, e)))?;
        let columns = stmt.column_names();
        while let Some(row) = stmt.step().map_err(|e| E::from(sqlite(&path, e)))? {
            f(row)?;
        }
        Ok(columns)
    }

    /// Runs the first statement of `sql` and collects its rows (for small results).
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Value>>, FileError> {
        let mut rows = Vec::new();
        self.for_each_row(sql, |row| {
            rows.push(row);
            Ok::<(), FileError>(())
        })?;
        Ok(rows)
    }
}

fn sqlite(path: &Path, failure: SqliteFailure) -> FileError {
    FileError::Sqlite { path: path.to_owned(), code: failure.code, message: failure.message }
}

fn c_path(path: &Path) -> Result<CString, FileError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| FileError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL byte in the path"),
    })
}

/// Writes database `name` of a DUMP (see [`crate::Connection::dump`]) to `out` as one
/// self-contained SQLite file: the WAL's committed transactions are applied and the result is
/// compacted (`VACUUM INTO`). `out` must not exist yet. Scratch files go to a private directory
/// next to `out`, removed afterwards.
pub fn write_dump(files: &[File], name: &str, out: &Path) -> Result<(), FileError> {
    let main = files.iter().find(|f| f.name == name).ok_or_else(|| FileError::MissingFile {
        name: name.to_owned(),
        found: files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let existed = out.exists();
    let wal_name = format!("{name}-wal");
    let wal = files.iter().find(|f| f.name == wal_name);
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let scratch = parent.join(format!(".dump-{}-{nanos}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FileError::Io { path, source }
    };
    std::fs::create_dir(&scratch).map_err(io(&scratch))?;
    let result = (|| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).map_err(io(&scratch))?;
        let db = scratch.join("db");
        std::fs::write(&db, &main.data).map_err(io(&db))?;
        if let Some(wal) = wal.filter(|w| !w.data.is_empty()) {
            let path = scratch.join("db-wal");
            std::fs::write(&path, &wal.data).map_err(io(&path))?;
        }
        let mut file = SqliteFile::open(&db, false)?;
        let target = out.to_str().ok_or_else(|| FileError::Io {
            path: out.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"),
        })?;
        file.execute(&format!("VACUUM INTO '{}'", target.replace('\'', "''")))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    if result.is_err() && !existed {
        // A failed VACUUM INTO can leave a partial output behind.
        let _ = std::fs::remove_file(out);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.db");
        let err = write_dump(&[File { name: "other".into(), data: vec![] }], "db.bin", &out).unwrap_err();
        assert_eq!(err.to_string(), "the dump holds no file named \"db.bin\" (it holds: other)");
        let err = SqliteFile::open_read_only(dir.path().join("nope.db")).unwrap_err();
        assert!(err.to_string().ends_with("nope.db: no such file"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let mut file = SqliteFile::open_read_only(&path).unwrap();
        let err = file.query("SELECT * FROM sqlite_master").unwrap_err();
        assert!(matches!(err, FileError::Sqlite { code: 26, .. }), "{err}");
        let out = dir.path().join("out.db");
        let err = write_dump(&[File { name: "db".into(), data: vec![1, 2, 3] }], "db", &out).unwrap_err();
        assert!(matches!(err, FileError::Sqlite { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "scratch files are removed");
    }
}
