//! Finds libdqlite: `DQLITE_LIB_DIR` (plus optional `DQLITE_STATIC`) first, then pkg-config.
//! Stops the build with the Debian packages to install when neither finds it. With `DOCS_RS`
//! set (docs.rs sets it) it looks for nothing: documentation links no library.

use std::env;

const MIN_VERSION: &str = "1.11.0";
const PACKAGES: &str = "libdqlite-dev libuv1-dev libsqlite3-dev liblz4-dev pkg-config";

fn main() {
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    // docs.rs (and `cargo doc` with DOCS_RS set) builds documentation only: nothing is linked,
    // so no libdqlite is needed there.
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    println!("cargo:rerun-if-env-changed=DQLITE_LIB_DIR");
    println!("cargo:rerun-if-env-changed=DQLITE_STATIC");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    if let Ok(dir) = env::var("DQLITE_LIB_DIR") {
        let kind = if env::var_os("DQLITE_STATIC").is_some() { "static" } else { "dylib" };
        println!("cargo:rustc-link-search=native={dir}");
        println!("cargo:rustc-link-lib={kind}=dqlite");
        println!("cargo:rustc-link-lib=dylib=sqlite3");
        return;
    }

    // libdqlite's own SQLite: a few of its calls are made directly (statement time limits).
    let sqlite = pkg_config::Config::new().probe("sqlite3");
    match (pkg_config::Config::new().atleast_version(MIN_VERSION).probe("dqlite"), sqlite) {
        (Ok(lib), Ok(_)) => {
            for path in &lib.include_paths {
                println!("cargo:include={}", path.display());
            }
        }
        (Ok(_), Err(err)) | (Err(err), _) => {
            // A build script reports a failure by exiting non-zero; the message is what the user reads.
            eprintln!(
                "\nerror: libdqlite >= {MIN_VERSION} or SQLite was not found through pkg-config ({err}).\n\
                 On Debian or Ubuntu install it with:\n\n    \
                 sudo apt-get install {PACKAGES}\n\n\
                 or point DQLITE_LIB_DIR at a directory holding libdqlite.so.\n"
            );
            std::process::exit(1);
        }
    }
}
