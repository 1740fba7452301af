//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds the `migrations/`
//! directories at compile time, and on stable Rust cargo cannot see that dependency by itself
//! (sqlx's documented build script).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
